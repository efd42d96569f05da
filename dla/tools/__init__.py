"""Command-line tools of the subproject (run with ``python -m dla.tools.<name>``)."""
