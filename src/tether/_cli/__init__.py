"""One module per ``tether`` subcommand; see ``tether/cli.py``."""
