"""The `corral` entry point: the command tree and the error boundary.

Exit codes: 0 success; 1 unexpected corral error; 2 bad input; 3 not found; 4 conflict with
the current state; 5 something missing on this machine; 6 an external command failed;
7 the hypervisor failed; 8 a wait timed out; 9 access refused (certificate, token);
10 no agent answered; 11/12/13 `task wait`: the task failed / was cancelled / was
interrupted; 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import typer

from corral import __version__
from corral.cli.lazy_group import LazyGroup
from corral.cli.output import fail
from corral.errors import CorralError

app = typer.Typer(
    name="corral",
    cls=LazyGroup,  # each command's module is imported when that command runs
    help="corral: a cluster manager for virtual machines, built for live migration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root() -> None:
    """corral: a cluster manager for virtual machines, built for live migration."""


@app.command()
def version() -> None:
    """Print corral's version."""
    typer.echo(__version__)


def run() -> None:
    """Run the CLI; a corral error becomes a message and its exit code, not a traceback."""
    try:
        app()
    except CorralError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def exit_code(exc: SystemExit) -> int:
    """The process's exit status for `exc` (a message is printed, as Python would)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main() -> None:
    """The `corral` command. Its output flushed, the process ends at once: tearing down the
    interpreter (every module's objects freed one by one) took ~0.1 s after the answer was
    printed, and nothing of the CLI's needs it (no atexit handler, files closed by `with`)."""
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exit_code(exc)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
