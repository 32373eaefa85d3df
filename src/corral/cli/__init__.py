"""The `corral` command line (typer + rich).

Holds: commands, their output for people (tables, progress bars) and for programs (--json).
Talks to an agent only, through the API client; the `lab` commands are the one exception, as
the lab is a development tool that builds the machine the agents run on.
Must never import: hypervisors, tasks, storage or migration internals.
"""
