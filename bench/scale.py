"""`make bench-scale`: what an idle cluster costs as it grows. Labs of 2, 4, 8 and 16 nodes
(`make bench-scale` adds 32; the lab's 1 s heartbeat, no VMs), one after the other in this
run; for each:

- the CPU time every agent used over WINDOW seconds once the cluster has formed (utime +
  stime of each agent's process, /proc/PID/stat), per agent (median and max) and all
  together, in % of one core; and its ratio to the same measure at 2 nodes in this run;
- the fitted exponent k of total ~ nodes^k (least squares on the logarithms): 1 is linear;
- `corral node list`'s answer time at the API: GET /v1/nodes on the local socket, with the
  client made once (the CLI's start-up excluded), median of 20;
- how long until a node whose agent is killed (SIGKILL) is shown offline by another
  (polled every 50 ms), against the configured time (offline_after); and how often, during
  the idle window, the first node showed a live member offline (looked at every second).

With `--state etcd` the same labs keep their membership in a 3-member etcd cluster (the
lab's `--state etcd`); the etcd members' own CPU over the same window is added as a column
(it is the part of the cost that moved out of the agents).

A number that could not be taken is recorded as missing, never as 0."""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import Result, bench_lab, command_line
from corral.lab import agents, etcd
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import WaitTimeout, wait_for

SIZES = (2, 4, 8, 16)
WINDOW = 20.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text.rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def etcd_pids(plan: LabPlan) -> list[int | None]:
    out: list[int | None] = []
    for member in etcd.lab_members(plan):
        try:
            out.append(int(member.pid_file.read_text()))
        except (OSError, ValueError):
            out.append(None)
    return out


def idle_cpu(plan: LabPlan, window: float) -> tuple[list[float | None], int, float | None]:
    """Each agent's CPU use over `window` seconds, in % of one core; how many times a live
    member was shown offline by the first node meanwhile (looked at every second); and the
    etcd members' CPU together (None without etcd, or when one could not be read)."""
    pids = [agents.agent_pid(node) for node in plan.nodes]
    stores = etcd_pids(plan)
    before = [cpu_seconds(p) if p else None for p in pids]
    stores_before = [cpu_seconds(p) if p else None for p in stores]
    flaps, end = 0, time.monotonic() + window
    with agents.client(plan.nodes[0]) as client:
        while time.monotonic() < end:  # the measurement itself: a fixed window of idle time
            flaps += sum(1 for n in client.get("/nodes") if not n["online"])
            time.sleep(1.0)
    after = [cpu_seconds(p) if p else None for p in pids]
    stores_after = [cpu_seconds(p) if p else None for p in stores]
    used = [
        (a - b) / window * 100 if a is not None and b is not None else None
        for a, b in zip(after, before, strict=True)
    ]
    store_used = [
        (a - b) / window * 100 if a is not None and b is not None else None
        for a, b in zip(stores_after, stores_before, strict=True)
    ]
    etcd_total = (
        sum(u for u in store_used if u is not None)
        if store_used and None not in store_used
        else None
    )
    return used, flaps, etcd_total


def list_latency_ms(node: LabNode, samples: int = 20) -> float:
    with agents.client(node) as client:
        client.get("/nodes")  # warm
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            client.get("/nodes")
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def offline_after_kill(plan: LabPlan) -> float | None:
    """Seconds from killing the last node's agent until the first node shows it offline."""
    victim, watcher = plan.nodes[-1], plan.nodes[0]
    pid = agents.agent_pid(victim)
    if pid is None:
        return None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    def offline() -> bool:
        with agents.client(watcher) as client:
            return any(n["name"] == victim.name and not n["online"] for n in client.get("/nodes"))

    try:
        wait_for(offline, timeout=60, what=f"{victim.name} to be shown offline", interval=0.05)
    except WaitTimeout:  # recorded as missing
        return None
    return time.monotonic() - killed


def all_online(plan: LabPlan) -> bool:
    with agents.client(plan.nodes[0]) as client:
        nodes = client.get("/nodes")
    return len(nodes) == len(plan.nodes) and all(n["online"] for n in nodes)


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """k in total = c * nodes^k, by least squares on the logarithms."""
    usable = [(math.log(n), math.log(t)) for n, t in points if t > 0]
    if len(usable) < 2:
        return None
    mx = statistics.mean(x for x, _ in usable)
    my = statistics.mean(y for _, y in usable)
    sxx = sum((x - mx) ** 2 for x, _ in usable)
    return sum((x - mx) * (y - my) for x, y in usable) / sxx if sxx else None


def measure(size: int, window: float, state: str) -> dict[str, Any]:
    with bench_lab(nodes=size, state=state) as plan:
        wait_for(lambda: all_online(plan), timeout=120, what="every node online")
        time.sleep(2.0)  # let the joins' own work end before the idle window
        per_agent, flaps, etcd_total = idle_cpu(plan, window)
        taken = [p for p in per_agent if p is not None]
        latency = list_latency_ms(plan.nodes[0])
        offline = offline_after_kill(plan)
    return {
        "nodes": size,
        "per_agent": per_agent,
        "per_agent_median": statistics.median(taken) if taken else None,
        "per_agent_max": max(taken) if taken else None,
        "total": sum(taken) if len(taken) == len(per_agent) else None,
        "list_ms": latency,
        "offline_s": offline,
        "flaps": flaps,
        "offline_after": agents.OFFLINE_AFTER,
        "etcd_total": etcd_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--window", type=float, default=WINDOW)
    parser.add_argument("--state", choices=("gossip", "etcd"), default="gossip")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with_etcd = args.state == "etcd"
    result = Result(
        name="scale-etcd" if with_etcd else "scale",
        title="Idle cost of the control plane by cluster size"
        + (" (state in a 3-member etcd)" if with_etcd else " (gossip)"),
        description=__doc__.split("\n\n", 1)[1].strip(),
        columns=[
            ("nodes", "nodes"),
            ("per_agent", "per agent, % of a core (median, max)"),
            ("total", "all agents, % of a core"),
            ("ratio", "total / total at 2 nodes"),
            ("list", "node list at the API, ms"),
            ("offline", "killed node shown offline after, s (configured)"),
            ("flaps", "live members shown offline during the window"),
            *([("etcd", "3 etcd members together, % of a core")] if with_etcd else []),
        ],
    )
    rows = [measure(size, args.window, args.state) for size in sizes]
    base = rows[0]["total"] if rows and rows[0]["nodes"] == 2 else None

    def pct(value: float | None) -> str:
        return "missing" if value is None else f"{value:.2f}"

    for row in rows:
        total = row["total"]
        result.rows.append(
            {
                "nodes": row["nodes"],
                "per_agent": f"{pct(row['per_agent_median'])}, {pct(row['per_agent_max'])}",
                "total": pct(total),
                "ratio": "-" if base is None or total is None else f"{total / base:.2f}",
                "list": f"{row['list_ms']:.1f}",
                "offline": f"{pct(row['offline_s'])} ({row['offline_after']:.0f})",
                "flaps": row["flaps"],
                **({"etcd": pct(row["etcd_total"])} if with_etcd else {}),
            }
        )
    exponent = fit_exponent([(r["nodes"], r["total"]) for r in rows if r["total"] is not None])
    result.notes.append(
        "fitted exponent of the total: "
        + ("missing" if exponent is None else f"{exponent:.2f} (1 is linear, 2 quadratic)")
    )
    for low in (4, 8):  # from where each agent has its full set of peers (2 nodes: one)
        part = [
            (r["nodes"], r["total"]) for r in rows if r["total"] is not None and r["nodes"] >= low
        ]
        if len(part) >= 2:
            k = fit_exponent(part)
            result.notes.append(
                f"fitted exponent from {low} nodes up: " + ("missing" if k is None else f"{k:.2f}")
            )
    result.notes.append(f"idle window {args.window:.0f} s per size; heartbeat 1 s")
    result.raw = {"rows": rows, "exponent": exponent}
    result.write(command_line())


if __name__ == "__main__":
    main()
