"""Control plane: the latency of listing VMs and of creating a task on another node, with 1
and 50 concurrent clients, and N migrations between two nodes at once against one by one."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import (
    Result,
    bench_lab,
    command_line,
    corral,
    corral_ok,
    create_vm,
    image,
    interleaved,
    migrate,
    spread,
)
from corral.client import AgentClient
from corral.lab import agents
from corral.lab.plan import LabPlan


def latencies(
    call: Callable[[AgentClient], None],
    socket: str,
    clients: int,
    each: int,
    node: str | None = None,
) -> list[float]:
    """Seconds per call, `clients` threads each making `each` calls on its own connection."""
    out: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        with AgentClient(socket_path=Path(socket), node=node, timeout=60) as client:
            for _ in range(each):
                t0 = time.perf_counter()
                call(client)
                took = time.perf_counter() - t0
                with lock:
                    out.append(took)

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return out


def row(what: str, clients: object, s: dict[str, float], digits: int) -> dict[str, object]:
    return {
        "what": what,
        "clients": clients,
        "median": f"{s['median']:.{digits}f}",
        "p99": f"{s['p99']:.{digits}f}",
        "spread": f"{s['min']:.{digits}f}-{s['max']:.{digits}f}",
        "n": s["n"],
    }


def run(plan: LabPlan, requests: int, parallel_vms: int, runs: int) -> Result:
    img = image()
    result = Result(
        "control-plane",
        "Control plane: API latency and concurrent migrations",
        "Latency of requests to node1's agent over its unix socket (the CLI's path) from 1"
        " and from 50 concurrent clients: `GET /v1/vms` (what `corral vm list` asks) and"
        " `POST /v1/tasks` forwarded to node2 (a `sleep 0` task created on another node over"
        " mutual TLS). `corral vm list` is also timed as a whole process (Python start"
        " included). Then N test guests (128 MiB, idle) migrated between the nodes all at"
        " once against one after another, interleaved. Times in ms unless marked.",
        [
            ("what", "what"),
            ("clients", "clients"),
            ("median", "median"),
            ("p99", "p99"),
            ("spread", "min-max"),
            ("n", "samples"),
        ],
    )
    node1 = plan.nodes[0]
    socket = str(agents.agent_socket(node1))
    for i in range(3):
        create_vm(plan, img, f"cp{i}", host=80 + i, memory_mib=128)

    def vm_list(c: AgentClient) -> None:
        c.get("/vms")

    def remote_task(c: AgentClient) -> None:
        c.post("/tasks", {"kind": "sleep", "args": {"seconds": 0}})

    cases = (("GET /v1/vms", vm_list, None), ("POST /v1/tasks on node2", remote_task, "node2"))
    for name, call, node in cases:
        for clients in (1, 50):
            each = requests if clients == 1 else max(2, requests // 10)
            s = spread([x * 1000 for x in latencies(call, socket, clients, each, node)])
            result.rows.append(row(name, clients, s, 1))
    cli = []
    for _ in range(10):
        t0 = time.perf_counter()
        corral_ok(node1, "vm", "list")
        cli.append((time.perf_counter() - t0) * 1000)
    result.rows.append(row("`corral vm list` (process)", 1, spread(cli), 0))
    for i in range(3, parallel_vms):
        create_vm(plan, img, f"cp{i}", host=80 + i, memory_mib=128)
    vms = [f"cp{i}" for i in range(parallel_vms)]
    where = [0]

    def move(vm: str) -> float:
        src = where[0]
        wall, _ = migrate(plan.nodes[src], vm, plan.nodes[1 - src].name, "--insecure")
        return wall

    def one_by_one(_: int) -> dict[str, float]:
        t0 = time.monotonic()
        walls = [move(vm) for vm in vms]
        where[0] = 1 - where[0]
        return {"total_s": time.monotonic() - t0, "each_s": max(walls)}

    def all_at_once(_: int) -> dict[str, float]:
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(vms)) as pool:
            walls = list(pool.map(move, vms))
        where[0] = 1 - where[0]
        return {"total_s": time.monotonic() - t0, "each_s": max(walls)}

    sides = interleaved({"one by one": one_by_one, "all at once": all_at_once}, runs)
    for name, samples in sides.items():
        s = spread([x["total_s"] for x in samples])
        result.rows.append(row(f"{len(vms)} migrations, {name} (total, s)", "-", s, 2))
    result.raw["migrations"] = sides
    for vm in vms:
        corral(plan.nodes[where[0]], "vm", "kill", vm)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per single client")
    parser.add_argument("--vms", type=int, default=4, help="concurrent migrations")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with bench_lab() as plan:
        run(plan, args.requests, args.vms, args.runs).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
