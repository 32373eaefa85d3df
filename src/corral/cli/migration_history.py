"""`corral migrations list|show`: the journals of the migrations a node started."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from corral.cli.connection import JsonOption, NodeOption, agent_client
from corral.cli.format import ago
from corral.cli.output import console, print_json
from corral.errors import NotFoundError

migrations_app = typer.Typer(
    help="The journals of past and running migrations.", no_args_is_help=True, add_completion=False
)


@migrations_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Migrations this node started, newest first, with the phase each reached."""
    with agent_client(node) as client:
        items = client.get("/migrations", limit=limit)
    if json_out:
        print_json(items)
        return
    table = Table()
    for column in ("id", "vm", "from", "to", "phase", "started", "took"):
        table.add_column(column)
    for m in items:
        took = f"{m['finished_at'] - m['started_at']:.1f}s" if m["finished_at"] else "running"
        table.add_row(
            m["id"], m["vm"], m["source"], m["target"], m["phase"], ago(m["started_at"]), took
        )
    console.print(table)


@migrations_app.command("show")
def show_command(
    migration_id: Annotated[str, typer.Argument(help="Its id.")],
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """One migration's journal: each step, recorded before it was taken."""
    with agent_client(node) as client:
        items = client.get("/migrations", limit=1000)
    found = [m for m in items if m["id"] == migration_id]
    if not found:
        raise NotFoundError(f"no migration {migration_id!r} started on this node")
    m = found[0]
    if json_out:
        print_json(m)
        return
    console.print(f"{m['vm']}: {m['source']} -> {m['target']} ({m['phase']})")
    for entry in m["journal"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
        console.print(
            f"  {stamp} {entry['phase']:<12} {entry['detail']}", highlight=False, markup=False
        )
