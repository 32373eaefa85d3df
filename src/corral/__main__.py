"""`python -m corral` runs the command-line interface."""

from corral.cli.main import main

main()
