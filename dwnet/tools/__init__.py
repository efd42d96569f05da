"""Command-line tools of the subproject (run with ``python -m dwnet.tools.<name>``)."""
