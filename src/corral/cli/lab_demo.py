"""`corral lab demo`: the story of corral on one machine, told step by step with what was
measured. Builds its own lab (prefix `demo`), so it never touches a lab a person has up,
and always removes it at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from corral import config
from corral.cli.output import console
from corral.client import AgentClient
from corral.lab.agents import agent_socket, form_cluster
from corral.lab.guest import LabGuest, parse_counter
from corral.lab.image import GuestImage, GuestImageBuilder
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig, LabPlan
from corral.waiting import wait_for

DEMO_PREFIX = "demo"


@dataclass
class DemoReport:
    """What the demo measured, shown as a table at the end."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.rows.append((what, value))
        console.print(f"  [cyan]{what}:[/] {value}")


def run_demo(root: Path | None = None) -> DemoReport:
    """Run the demo; the lab is removed whatever happens."""
    report = DemoReport()
    root = root or config.lab_root().with_name("corral-demo")
    console.rule("[bold]corral demo")
    with console.status("test guest image"):
        t0 = time.monotonic()
        image = GuestImageBuilder(config.cache_dir()).build()
    report.add("guest image", f"{image.kernel_package}, ready in {time.monotonic() - t0:.1f} s")
    cfg = LabConfig(nodes=2, prefix=DEMO_PREFIX, root=root)
    try:
        t0 = time.monotonic()
        plan = lab_up(cfg)
        report.add("lab up", f"2 nodes + client in {time.monotonic() - t0:.2f} s")
        _cluster_steps(plan, report)
        _guest_steps(plan, image, report)
    finally:
        with console.status("lab down"):
            lab_down(root)
        report.add("lab down", "namespaces, links and directories removed")
    table = Table(title="what the demo measured")
    table.add_column("step")
    table.add_column("result")
    for row in report.rows:
        table.add_row(*row)
    console.print(table)
    return report


def _cluster_steps(plan: LabPlan, report: DemoReport) -> None:
    """An agent per node, node2 joined by token; node1 runs a deferred task on node2."""
    t0 = time.monotonic()
    with console.status("starting an agent per node; node2 joins node1 with a token"):
        form_cluster(plan)
    report.add(
        "cluster formed", f"2 agents, mutual TLS, both online in {time.monotonic() - t0:.1f} s"
    )
    with AgentClient(socket_path=agent_socket(plan.nodes[1])) as on_node2:
        nodes = on_node2.get("/nodes")
    report.add(
        "node2 sees",
        ", ".join(f"{n['name']} {'online' if n['online'] else 'offline'}" for n in nodes),
    )
    # node1 creates a deferred task on node2 and follows it from node1.
    with AgentClient(socket_path=agent_socket(plan.nodes[0]), node="node2") as to_node2:
        task = to_node2.post("/tasks", {"kind": "sleep", "args": {"seconds": 1, "steps": 4}})
        done = wait_for(
            lambda: (
                (t := to_node2.get(f"/tasks/{task['id']}"))["state"] in ("succeeded", "failed")
                and t
            ),
            timeout=30,
            what="the task",
        )
    report.add(
        "deferred task",
        f"node1 -> node2: task {done['id']} {done['state']},"
        f" progress {done['progress'].get('done')}/{done['progress'].get('total')}",
    )


def _guest_steps(plan: LabPlan, image: GuestImage, report: DemoReport) -> None:
    """Boot the test guest in node1, ping it from the client, read its counters."""
    node = plan.node("node1")
    with LabGuest(plan, node, image, name="demo-vm", host_number=10) as guest:
        t0 = time.monotonic()
        with console.status(f"booting the test guest in {node.name} (QEMU, TCG)"):
            guest.wait_booted()
        report.add("guest booted", f"{time.monotonic() - t0:.1f} s in {node.netns}")
        with console.status("waiting for the guest to answer ping"):
            wait_for(guest.ping_from_client, timeout=60, what="the guest to answer ping")
        report.add("first ping", f"{time.monotonic() - t0:.1f} s after start")
        ok = guest.ping_from_client(count=5)
        report.add(
            "ping x5 from client",
            f"{plan.client_netns} -> {guest.address.ip}: {'ok' if ok else 'LOST'}",
        )
        with guest.connect_counter() as conn:
            stream = conn.makefile("r")
            first = parse_counter(stream.readline())
            for _ in range(9):
                last = parse_counter(stream.readline())
        if first and last:
            report.add(
                "TCP counter stream",
                f"uptime {first.uptime:.2f} s -> {last.uptime:.2f} s over 10 lines",
            )
        counter = guest.last_counter()
        if counter:
            report.add("console counter", f"line {counter.seq}, uptime {counter.uptime} s")
        console.print("[dim]last console lines:[/]")
        for line in guest.console_lines()[-3:]:
            console.print(f"  [dim]{line}[/]")
