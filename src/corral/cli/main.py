"""The `corral` entry point: the command tree and the error boundary.

Exit codes: 0 success; 1 unexpected corral error; 2 bad input; 3 not found; 4 conflict with
the current state; 5 something missing on this machine; 6 an external command failed;
7 the hypervisor failed; 8 a wait timed out; 9 access refused (certificate, token);
10 no agent answered; 11/12/13 `task wait`: the task failed / was cancelled / was
interrupted; 130 interrupted.
"""

from __future__ import annotations

import typer

from corral import __version__
from corral.cli.agent_command import agent_command
from corral.cli.cluster_commands import cluster_app, node_app
from corral.cli.lab_commands import lab_app
from corral.cli.migrate_command import migrate_command
from corral.cli.migration_history import migrations_app
from corral.cli.output import fail
from corral.cli.task_commands import task_app
from corral.cli.vm_commands import checkpoint_app, vm_app
from corral.errors import CorralError

app = typer.Typer(
    name="corral",
    help="corral: a cluster manager for virtual machines, built for live migration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("agent")(agent_command)
app.command("migrate")(migrate_command)
app.add_typer(migrations_app, name="migrations")
app.add_typer(cluster_app, name="cluster")
app.add_typer(node_app, name="node")
app.add_typer(task_app, name="task")
app.add_typer(vm_app, name="vm")
app.add_typer(checkpoint_app, name="checkpoint")
app.add_typer(lab_app, name="lab")


@app.command()
def version() -> None:
    """Print corral's version."""
    typer.echo(__version__)


def main() -> None:
    """Run the CLI; a corral error becomes a message and its exit code, not a traceback."""
    try:
        app()
    except CorralError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
