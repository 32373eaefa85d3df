"""Downtime as the guest's users see it, against what QEMU reports: the longest silence in
the guest's TCP counter stream as the client receives it (host clock), and the pings lost at
a 10 ms interval from the client namespace; for an idle guest and guests rewriting 16, 64 and
128 MiB. (The guest's own uptime between two console lines is not a measure of the pause: the
guest's clock does not run while it is stopped, so that gap stays one tick.)"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.harness import (
    Result,
    bench_lab,
    cell,
    command_line,
    corral_ok,
    create_vm,
    image,
    measured,
    migrate,
)
from corral.lab.plan import LabPlan
from corral.lab.probes import CounterClient, PingMeter

TICK = 0.1  # the guest prints a counter every 100 ms
PING_INTERVAL = 0.01


def one(plan: LabPlan, vm: str, ip: str, src: int) -> dict[str, Any]:
    """Migrate `vm` from node `src` to the other, measuring all four ways."""
    stream = CounterClient.connect(plan, ip)
    ping = PingMeter.start(plan, ip, interval=PING_INTERVAL)
    try:
        while not stream.counters:
            time.sleep(0.05)
        first = stream.counters[-1].seq
        t0 = time.monotonic()
        wall, summary = migrate(plan.nodes[src], vm, plan.nodes[1 - src].name)
        seen = len(stream.counters)
        deadline = time.monotonic() + 10
        while len(stream.counters) < seen + 5 and time.monotonic() < deadline:
            time.sleep(0.05)  # a few lines after the move, so the last gap is closed
    finally:
        sent, received = ping.stop()
        stream.close()
    gap = stream.largest_arrival_gap(since=t0)
    return {
        "wall_s": wall,
        "qemu_ms": summary.get("downtime_ms"),  # None when QEMU did not say
        "tcp_ms": None if gap is None else max(0.0, (gap - TICK) * 1000),
        "first_seq": first,
        "ping_lost": sent - received,
        "ping_ms": (sent - received) * PING_INTERVAL * 1000,
        "iterations": summary["iterations"],
        "actions": summary["policy_actions"],
    }


def run(plan: LabPlan, runs: int, levels: list[int]) -> Result:
    img = image()
    result = Result(
        "downtime",
        "Downtime: what the guest and its users see, against what QEMU reports",
        "One `corral migrate` (TLS, default policy, no bandwidth limit) of a 512 MiB test"
        " guest rewriting N MiB of its memory with random bytes, per run, alternating"
        " direction. *TCP*: the largest gap between two counter lines (printed every 100 ms)"
        " arriving at the client (host clock), less 100 ms. *ping*: packets lost at a 10 ms"
        " interval from the client namespace x 10 ms. Each cell: median (min-max), n = the"
        " samples measured; a sample that could not be measured is counted as missing.",
        [
            ("dirty", "guest rewrites"),
            ("qemu", "QEMU downtime ms"),
            ("tcp", "TCP gap ms"),
            ("ping", "ping loss ms"),
            ("lost", "pings lost"),
            ("wall", "migration s"),
        ],
    )
    for level in levels:
        vm = f"dt{level}"
        ip = create_vm(
            plan, img, vm, host=40 + levels.index(level), memory_mib=512, dirty_mib=level
        )
        samples = [one(plan, vm, ip, run % 2) for run in range(runs)]
        corral_ok(plan.nodes[runs % 2], "vm", "kill", vm)
        corral_ok(plan.nodes[runs % 2], "vm", "delete", vm)
        result.raw[vm] = samples
        result.rows.append(
            {
                "dirty": f"{level} MiB" if level else "idle",
                "qemu": cell([s["qemu_ms"] for s in samples], digits=0),
                "tcp": cell(measured([s["tcp_ms"] for s in samples], "TCP gap"), digits=0),
                "ping": cell([s["ping_ms"] for s in samples], digits=0),
                "lost": statistics.median(s["ping_lost"] for s in samples),
                "wall": cell([s["wall_s"] for s in samples]),
            }
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="0,16,64,128", help="MiB the guest rewrites")
    args = parser.parse_args()
    with bench_lab() as plan:
        run(plan, args.runs, [int(x) for x in args.levels.split(",")]).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
