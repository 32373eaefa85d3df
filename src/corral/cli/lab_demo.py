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
from corral.lab.guest import LabGuest, parse_counter
from corral.lab.image import GuestImageBuilder
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig
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
