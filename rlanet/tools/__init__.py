"""Command-line tools of the subproject (run with ``python -m rlanet.tools.<name>``)."""
