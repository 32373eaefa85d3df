"""`corral node drain` and `corral node undrain`: node maintenance."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from corral.cli.connection import JsonOption, agent_client
from corral.cli.follow import EXIT_BY_STATE, follow_task
from corral.cli.output import console, print_json, print_table
from corral.client import AgentClient
from corral.errors import CorralError
from corral.migration.options import MIB

NodeArgument = Annotated[
    str, typer.Argument(metavar="NODE", help="The member to put in (or out of) maintenance.")
]


def drain_table(progress: dict[str, Any]) -> Table:
    """One row per VM: what became of it, where it went, and why it stayed."""
    table = Table()
    table.add_column("VM", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("to", no_wrap=True)
    table.add_column("reasons")
    for name, entry in sorted(progress.get("vms", {}).items()):
        why = "; ".join(f"[{r['code']}] {r['message']}" for r in entry.get("reasons", []))
        table.add_row(escape(name), entry["state"], entry.get("target") or "-", escape(why) or "-")
    return table


def _follow(client: AgentClient, task: dict[str, Any]) -> dict[str, Any]:
    """Follow the drain; its record at the end, however it ended."""
    try:
        return follow_task(client, task)
    except CorralError:
        record: dict[str, Any] = client.get(f"/tasks/{task['id']}")
        if record["state"] in ("queued", "running"):
            raise
        return record


def drain_command(
    name: NodeArgument,
    parallel: Annotated[
        int, typer.Option(help="Migrations at once in the whole cluster (others' count too).")
    ] = 2,
    per_node: Annotated[
        int, typer.Option(help="Migrations at once into (or out of) any other node.")
    ] = 1,
    bandwidth: Annotated[int, typer.Option(help="MiB/s each migration may use; 0: no cap.")] = 0,
    with_local_disks: Annotated[
        bool,
        typer.Option("--with-local-disks", help="Copy the disks a target does not share."),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Follow the drain until it ends.")] = True,
    json_out: JsonOption = False,
) -> None:
    """Put NODE in maintenance: no VM is placed there and migrations to it are refused;
    then live-migrate its running VMs away (each placed as `corral migrate VM` places it)
    and re-home its stopped VMs whose storage is shared. A VM that cannot move stays,
    running, with its reasons. The node stays in maintenance until `corral node undrain`.

    Exit codes: 0 drained; 11 partially drained (the table says why each VM stayed);
    12 cancelled."""
    body = {
        "parallel": parallel,
        "per_node": per_node,
        "bandwidth_mib": bandwidth,
        "with_local_disks": with_local_disks,
    }
    with agent_client(name) as client:
        task = client.post("/node/drain", body, timeout=60)
        if not wait:
            print_json(task) if json_out else console.print(
                f"draining {name}: task {task['id']} (follow: corral task show {task['id']}"
                f" --node {name})"
            )
            return
        if not json_out:
            console.print(f"draining {name}: no VM is placed there from now on")
        record = _follow(client, task)
    if json_out:
        print_json(record)
    else:
        progress = record["progress"]
        print_table(drain_table(progress))
        moved = progress.get("bytes", 0) / MIB
        console.print(
            f"{name}: {progress.get('phase')} ({progress.get('done')} of"
            f" {progress.get('total')} VMs, {moved:.1f} MiB sent)",
            markup=False,
        )
    if record["state"] != "succeeded":
        raise typer.Exit(EXIT_BY_STATE.get(record["state"], 1))


def undrain_command(name: NodeArgument, json_out: JsonOption = False) -> None:
    """End NODE's maintenance: cancel its drain if one runs (migrations in flight finish
    or roll back) and place VMs there again."""
    with agent_client(name) as client:
        answer = client.post("/node/undrain")
    if json_out:
        print_json(answer)
        return
    cancelled = answer.get("cancelled_drain")
    also = f"; its drain (task {cancelled}) was cancelled" if cancelled else ""
    console.print(f"{name} takes VMs again{also}")
