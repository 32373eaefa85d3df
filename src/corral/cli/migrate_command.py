"""`corral migrate VM NODE`: live migration with a progress bar a person can read, JSON lines
for programs, `--plan` to ask without moving, `--cancel` and `--recover`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from corral.cli.connection import JsonOption, NodeOption, agent_client
from corral.cli.follow import FINISHED, TaskEnded, ended_stream
from corral.cli.output import console, print_json
from corral.client import AgentClient
from corral.errors import UserInputError
from corral.tasks.states import TaskState

MIB = 1024 * 1024


def _size(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / MIB:.0f} MiB"


def _info(p: dict[str, Any]) -> str:
    """MB/s, dirty rate, expected downtime and ETA of a progress record."""
    parts = []
    if p.get("total"):
        parts.append(f"{_size(p.get('done', 0))}/{_size(p['total'])}")
    if p.get("mbps") is not None:
        parts.append(f"{p['mbps'] / 8:.0f} MB/s")
    if p.get("dirty_rate_bytes"):
        parts.append(f"dirty {p['dirty_rate_bytes'] / MIB:.0f} MiB/s")
    if p.get("expected_downtime_ms") is not None and p.get("phase") == "transfer":
        parts.append(
            f"downtime ~{p['expected_downtime_ms']} ms (limit {p.get('downtime_limit_ms')})"
        )
    if p.get("iteration"):
        parts.append(f"pass {p['iteration']}")
    if p.get("throttle_percent"):
        parts.append(f"throttle {p['throttle_percent']}%")
    if p.get("eta_s") is not None:
        parts.append(f"ETA {p['eta_s']:.1f}s")
    return "  ".join(parts)


FOLLOW_TIMEOUT = 7 * 24 * 3600.0  # the migration's own timeouts end it long before


def follow_migration(client: AgentClient, task: dict[str, Any], json_lines: bool) -> dict[str, Any]:
    """Follow the migration task as the agent streams it (every change, at once)."""
    updates = client.stream(f"/tasks/{task['id']}/watch", timeout=FOLLOW_TIMEOUT)
    last = task
    if json_lines:
        shown = None
        for last in updates:
            if last["progress"] != shown and last["state"] not in FINISHED:
                shown = last["progress"]
                sys.stdout.write(json.dumps({"event": "progress", **shown}) + "\n")
                sys.stdout.flush()
        ended_stream(last)
        return last
    # Loaded for people only: `--json` (programs) does without the bar's libraries.
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[phase]:<10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        row = bar.add_task("migrate", total=None, phase="preflight", info="")
        disks = None  # a row of its own for the disk copy (--with-local-disks), above RAM
        shown = ""
        for last in updates:
            p = last["progress"]
            if p.get("phase") == "disks" and disks is None:
                # The disks' row first, the RAM's below it: the order they move in.
                bar.remove_task(row)
                disks = bar.add_task("disks", total=None, phase="disks", info="")
                row = bar.add_task("migrate", total=None, phase="RAM", info="after the disks")
            bar.update(
                disks if p.get("phase") == "disks" and disks is not None else row,
                total=p.get("total") or None,
                completed=p.get("done", 0),
                phase=p.get("phase", last["state"]),
                info=_info(p),
            )
            if p.get("last_action") and p["last_action"] != shown:
                shown = p["last_action"]
                bar.console.print(f"[yellow]policy:[/] {shown}")
    ended_stream(last)
    return last


def print_migration_summary(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['vm']}: {result['source']} -> {result['target']}")
    table.add_column("measure")
    table.add_column("value")
    hv = {"qemu": "QEMU", "bhyve": "bhyve"}.get(str(result.get("hypervisor")), "QEMU")
    downtime = result["downtime_ms"]
    rows = [
        ("total time", f"{result['total_s']:.2f} s ({hv} {result['qemu_total_ms']} ms)"),
        (
            "downtime",
            f"{downtime} ms (reported by {hv})"
            if downtime is not None
            else f"not reported by {hv}",
        ),
        ("sent", f"{_size(result['bytes_sent'])} of {_size(result['ram_total'])} RAM"),
        ("iterations", str(result["iterations"])),
        ("throughput", f"{result['throughput_mbps']} Mbit/s"),
        ("stream", f"{'TLS' if result['tls'] else 'plain TCP'}, {result['channels']} channel(s)"),
    ]
    copied = result.get("disks")
    if copied:
        took = "" if copied.get("copy_s") is None else f" in {copied['copy_s']:.2f} s"
        rate = "" if not copied.get("throughput_mbps") else f", {copied['throughput_mbps']} Mbit/s"
        kept = "kept" if copied.get("source_images_kept") else "removed"
        rows.append(
            (
                "disks",
                f"{copied['copied']} copied: {_size(copied['data_bytes'])} of data"
                f" ({_size(copied['virtual_bytes'])} virtual){took}{rate};"
                f" source images {kept}",
            )
        )
    rows += [("policy", action) for action in result["policy_actions"]]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _ranking_output(ranking: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="placement (best first)")
    for column in ("node", "verdict", "free after", "VMs", "reasons"):
        table.add_column(column, no_wrap=column != "reasons")
    for c in ranking:
        free = c["free_after_mib"]
        table.add_row(
            c["node"],
            "[green]passes[/]" if c["allowed"] else "[red]refused[/]",
            "?" if free is None else f"{free} MiB",
            "?" if c["vm_count"] is None else str(c["vm_count"]),
            escape("; ".join(f"[{r['code']}] {r['message']}" for r in c["reasons"])),
        )
    console.print(table)


def _plan_output(plan: dict[str, Any]) -> None:
    if "ranking" in plan:
        _ranking_output(plan["ranking"])
    verdict = "[green]allowed[/]" if plan["allowed"] else "[red]refused[/]"
    target = plan["target"] or "no member"
    console.print(f"{plan['vm']}: {plan['source']} -> {target}: {verdict}")
    for r in plan["reasons"]:
        console.print(
            f"  [red]{r['code']}[/] ({r['node']}): {escape(r['message'])}", highlight=False
        )
    est = plan.get("estimate")
    if not est:
        return
    console.print(f"  RAM               {_size(est['ram_bytes'])}")
    for role, info in est.get("storage", {}).items():
        console.print(
            f"  {role + ' dir':<17} {info['path']} ({info['filesystem']},"
            f" id {str(info['id'])[:8]})",
            markup=False,
        )
    if est.get("to_send_bytes") is not None:
        console.print(
            f"  to send           {_size(est['to_send_bytes'])} (what the guest has touched)"
        )
    if "dirty_rate_bytes" in est:
        console.print(
            f"  dirty rate        {est['dirty_rate_bytes'] / MIB:.1f} MiB/s (calc-dirty-rate, 1 s)"
        )
    if est.get("bandwidth_bytes_per_s"):
        console.print(
            f"  stream rate       {est['bandwidth_bytes_per_s'] / MIB:.0f} MiB/s, from"
            f" {est.get('basis', 'the link probe')}",
            markup=False,
        )
    if est.get("link_bytes_per_s"):
        console.print(
            f"  link probe        {est['link_bytes_per_s'] / MIB:.0f} MiB/s (agent to agent)"
        )
    disks = est.get("disk_copy")
    if disks:
        took = "not known" if disks.get("copy_s") is None else f"about {disks['copy_s']} s"
        console.print(
            f"  disk copy         {disks['disks']} local disk(s), {_size(disks['data_bytes'])}"
            f" of data: {took}, first (from {disks['basis']})",
            markup=False,
        )
    if "converges" in est:
        if not est["converges"]:
            when = "no"
        elif est.get("fixed_s") is None:
            when = f"copy in about {est['copy_s']} s (+ start and switchover: not known yet)"
        else:
            when = f"in about {est['expected_s']} s (copy {est['copy_s']} + {est['fixed_s']} s)"
        console.print(
            f"  converges         {when} (downtime up to {est['max_downtime_ms']}"
            f" ms, timeout {est['timeout_s']:.0f} s)"
        )


def migrate_command(
    vm: Annotated[str, typer.Argument(help="The VM to move.")],
    target: Annotated[
        str | None,
        typer.Argument(
            help="The node to move it to; left out, corral picks the member that passes"
            " preflight with the most free memory after placing the VM (then fewest VMs)."
        ),
    ] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Preflight and estimate only.")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Abort its migration.")] = False,
    recover: Annotated[
        bool, typer.Option("--recover", help="Find where it really runs and repair the records.")
    ] = False,
    bandwidth: Annotated[int, typer.Option(help="MiB/s the stream may use; 0: no limit.")] = 0,
    max_downtime: Annotated[
        int, typer.Option(help="ms: the policy raises the downtime limit up to this.")
    ] = 1000,
    parallel: Annotated[int, typer.Option(help="multifd channels (1: a single stream).")] = 1,
    postcopy: Annotated[bool, typer.Option(help="Allow switching to post-copy.")] = False,
    auto_converge: Annotated[
        bool, typer.Option(help="Allow throttling the guest's vCPUs when it does not converge.")
    ] = True,
    timeout: Annotated[
        float | None,
        typer.Option(help="Completion timeout in s (120 per GiB of RAM, at least 60)."),
    ] = None,
    on_timeout: Annotated[str, typer.Option(help="abort or force.")] = "abort",
    insecure: Annotated[bool, typer.Option(help="Send memory (and disks) without TLS.")] = False,
    with_local_disks: Annotated[
        bool,
        typer.Option(
            "--with-local-disks",
            help="Copy the disks the target does not share while the VM runs (NBD, TLS),"
            " then move the RAM; the target writes its own config.",
        ),
    ] = False,
    keep_source_disks: Annotated[
        bool,
        typer.Option(
            "--keep-source-disks", help="After a success, keep the source's copied images."
        ),
    ] = False,
    drop_checkpoints: Annotated[
        bool,
        typer.Option(
            "--drop-checkpoints",
            help="Delete the checkpoints that cannot move with the VM (they live in the"
            " source's images) instead of refusing.",
        ),
    ] = False,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Live-migrate VM to NODE while it keeps running (checks both nodes first).

    Exit codes: 0 moved; 4 refused by preflight (every reason listed); 14 failed (the VM runs
    where it was, or see --recover); 12 cancelled."""
    for flag, given in (
        ("--keep-source-disks", keep_source_disks),
        ("--drop-checkpoints", drop_checkpoints),
    ):
        if given and not with_local_disks:
            raise UserInputError(flag, "applies only with --with-local-disks")
    with agent_client(node) as client:
        if cancel:
            answer = client.post(f"/migrations/{vm}/cancel")
            print_json(answer) if json_out else console.print(f"cancel requested ({vm})")
            return
        if recover:
            answer = client.post(f"/migrations/{vm}/recover", timeout=120)
            print_json(answer) if json_out else console.print(
                f"{vm}: {answer['outcome']}", markup=False
            )
            return
        body = {
            "vm": vm,
            "target": target or "auto",  # corral chooses: the best member that passes
            "bandwidth_mib": bandwidth,
            "max_downtime_ms": max_downtime,
            "parallel": parallel,
            "postcopy": postcopy,
            "auto_converge": auto_converge,
            "timeout_s": timeout,
            "on_timeout": on_timeout,
            "insecure": insecure,
            "with_local_disks": with_local_disks,
            "keep_source_disks": keep_source_disks,
            "drop_checkpoints": drop_checkpoints,
        }
        if plan:
            answer = client.post("/migrations/plan", body, timeout=120)
            print_json(answer) if json_out else _plan_output(answer)
            if not answer["allowed"]:
                raise typer.Exit(4)
            return
        started = client.post("/migrations", body, timeout=120)
    if target is None and not json_out:
        console.print(f"{vm}: {started['source']} -> {started['target']} (chosen)")
    with agent_client(started["source"]) as source:
        task = follow_migration(source, started["task"], json_out)
    if task["state"] != TaskState.SUCCEEDED:
        ended = TaskEnded(task)
        if task["state"] == TaskState.FAILED and task.get("exit_code"):
            ended.exit_code = int(task["exit_code"])  # the migration's error says (14 mostly)
        raise ended
    if json_out:
        sys.stdout.write(json.dumps({"event": "done", **task["result"]}) + "\n")
    else:
        print_migration_summary(task["result"])
