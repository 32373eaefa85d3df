"""`corral lab demo`: the story of corral on one machine, told step by step with what was
measured. Builds its own lab (prefix `demo`), so it never touches a lab a person has up,
and always removes it at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from corral import config
from corral.cli.follow import TaskEnded, follow_task
from corral.cli.migrate_command import follow_migration, print_migration_summary
from corral.cli.output import console
from corral.client import AgentClient
from corral.lab import netns
from corral.lab.agents import agent_socket, form_cluster
from corral.lab.image import GuestImage, GuestImageBuilder, guest_cmdline
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig, LabPlan
from corral.lab.probes import CounterClient, PingMeter
from corral.tasks.states import TaskState
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
    cfg = LabConfig(nodes=3, prefix=DEMO_PREFIX, root=root)
    try:
        t0 = time.monotonic()
        plan = lab_up(cfg)
        report.add("lab up", f"3 nodes + client in {time.monotonic() - t0:.2f} s")
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
    """An agent per node, the others joined by token; node1 runs a deferred task on node2."""
    t0 = time.monotonic()
    with console.status("starting an agent per node; the others join node1 with a token"):
        form_cluster(plan)
    report.add(
        "cluster formed",
        f"{len(plan.nodes)} agents, mutual TLS, all online in {time.monotonic() - t0:.1f} s",
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
            lambda: TaskState((t := to_node2.get(f"/tasks/{task['id']}"))["state"]).finished and t,
            timeout=30,
            what="the task",
        )
    report.add(
        "deferred task",
        f"node1 -> node2: task {done['id']} {done['state']},"
        f" progress {done['progress'].get('done')}/{done['progress'].get('total')}",
    )


def _migrate(client: AgentClient, plan: LabPlan, vm: str, target: str) -> dict[str, Any]:
    started = client.post("/migrations", {"vm": vm, "target": target}, timeout=120)
    source = plan.node(started["source"])
    with AgentClient(socket_path=agent_socket(source)) as on_source:
        task = follow_migration(on_source, started["task"], json_lines=False)
    if task["state"] != "succeeded":
        raise TaskEnded(task)
    print_migration_summary(task["result"])
    result: dict[str, Any] = task["result"]
    return result


def _guest_steps(plan: LabPlan, image: GuestImage, report: DemoReport) -> None:
    """A VM on node1 through its agent, pinged and streamed from the client, migrated to
    node2 and back with the progress bar, with what the client saw; then node1 drained."""
    node1 = plan.node("node1")
    address = plan.guest_address(10)
    spec = {
        "name": "demo-vm",
        "memory_mib": 256,
        "cpu": {"count": 2, "topology": {"sockets": 1, "cores": 2, "threads": 1}},
        "disks": [{"size_mib": 32}],
        "nics": [{"bridge": "br0"}],
        "boot": {
            "kernel": str(image.kernel),
            "initrd": str(image.initrd),
            "cmdline": guest_cmdline(ip=str(address), disk="vda"),
        },
    }
    with AgentClient(socket_path=agent_socket(node1)) as client:
        t0 = time.monotonic()
        client.post("/vms", spec)
        follow_task(client, client.post("/vms/demo-vm/start"), quiet=True)
        with console.status("booting the test guest on node1 (QEMU, TCG)"):
            wait_for(
                lambda: "BOOTED" in client.get("/vms/demo-vm/console", lines=50),
                timeout=120,
                what="the guest to boot",
            )
        report.add("guest booted", f"{time.monotonic() - t0:.1f} s on node1, {address.ip}")
        with console.status("waiting for the guest to answer ping"):
            wait_for(
                lambda: netns.pings(plan.client_netns, str(address.ip)),
                timeout=60,
                what="the guest to answer ping",
            )
        report.add("first ping", f"{time.monotonic() - t0:.1f} s after create")
        stream = CounterClient.connect(plan, str(address.ip))
        wait_for(lambda: len(stream.counters) >= 3, timeout=30, what="the counter stream")
        pings = PingMeter.start(plan, str(address.ip), interval=0.01)
        try:
            there = _migrate(client, plan, "demo-vm", "node2")
            back = _migrate(client, plan, "demo-vm", "node1")
        finally:
            sent, received = pings.stop()
        wait_for(lambda: len(stream.counters) > 20, timeout=30, what="more counter lines")
        for label, result in (("node1 -> node2", there), ("node2 -> node1", back)):
            report.add(
                f"migrate {label}",
                f"{result['total_s']:.2f} s, QEMU downtime {result['downtime_ms']} ms,"
                f" {result['bytes_sent'] / 2**20:.0f} MiB sent, TLS",
            )
        report.add("ping every 10 ms", f"{sent} sent, {sent - received} lost across both moves")
        alive = "alive" if not stream.closed else "CLOSED"
        gap = stream.largest_gap()
        longest = "not measured (under two lines)" if gap is None else f"{gap * 1000:.0f} ms"
        report.add(
            "TCP counter stream",
            f"{alive}, {len(stream.counters)} lines, "
            f"{'none lost' if stream.continuous else 'LINES LOST'}, longest silence at the"
            f" client {longest} (lines every 100 ms)",
        )
        _drain_step(plan, report, stream)
        stream.close()


def _drain_step(plan: LabPlan, report: DemoReport, stream: CounterClient) -> None:
    """Maintenance of the node the VM runs on: drained with a progress bar, the VM placed
    by corral on another node, the stream still alive; then undrained."""
    with AgentClient(socket_path=agent_socket(plan.node("node1"))) as client:
        console.print("[bold]corral node drain node1[/] (maintenance: its VMs go elsewhere)")
        seen = len(stream.counters)
        t0 = time.monotonic()
        record = follow_task(client, client.post("/node/drain", {}))
        wall = time.monotonic() - t0
        result = record["result"]
        moved = ", ".join(f"{vm} -> {target}" for vm, target in result["targets"].items())
        report.add(
            "drain node1",
            f"{result['outcome']} in {wall:.2f} s: {moved}, {result['bytes'] / 2**20:.0f} MiB sent",
        )
        states = {n["name"]: n["draining"] for n in client.get("/nodes")}
        wait_for(lambda: len(stream.counters) > seen + 5, timeout=30, what="the stream")
        report.add(
            "after the drain",
            f"node1 draining={states['node1']} (no VM placed there);"
            f" TCP counter stream {'alive' if not stream.closed else 'CLOSED'},"
            f" {'none lost' if stream.continuous else 'LINES LOST'}",
        )
        client.post("/node/undrain")
        owner = result["targets"]["demo-vm"]
    with AgentClient(socket_path=agent_socket(plan.node(owner))) as on_owner:
        on_owner.post("/vms/demo-vm/kill")
