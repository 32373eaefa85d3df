"""Convergence: a guest that rewrites its memory faster than the bandwidth limit lets the
migration copy it. Plain pre-copy (the floor script: no policy, no auto-converge) against
corral's policy (downtime steps, auto-converge, then abort or force at the timeout)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.floor import FloorVm
from bench.harness import (
    Result,
    bench_lab,
    command_line,
    corral_ok,
    create_vm,
    image,
    interleaved,
    migrate_lines,
)
from corral.lab.plan import LabPlan

MIB = 1 << 20


def run(plan: LabPlan, runs: int, dirty: int, bandwidth: int, timeout: int) -> Result:
    img = image()
    result = Result(
        "convergence",
        "Convergence: plain pre-copy against corral's policy",
        f"A 512 MiB test guest rewriting {dirty} MiB of random bytes without pause, migrated"
        f" with the bandwidth limited to {bandwidth} MiB/s, so pre-copy alone cannot catch"
        f" up. *plain pre-copy*: bench/floor.py with auto-converge off and QEMU's default"
        f" 300 ms downtime limit, given {timeout} s, then cancelled. *corral*: `corral migrate"
        f" --bandwidth {bandwidth} --timeout {timeout}` with its default policy (raise the"
        " downtime limit on stalls, then engage auto-converge; abort at the timeout).",
        [
            ("side", "side"),
            ("run", "run"),
            ("completed", "completed"),
            ("seconds", "time s"),
            ("downtime", "downtime ms"),
            ("throttle", "max CPU throttle %"),
            ("iterations", "iterations"),
            ("actions", "policy actions"),
        ],
    )
    vm = "conv"
    create_vm(plan, img, vm, host=70, memory_mib=512, dirty_mib=dirty)
    floor = FloorVm.make(plan, img, "fconv", 71, 512, dirty_mib=dirty)
    floor.start()
    where = [0]

    def plain(i: int) -> dict[str, Any]:
        out = floor.migrate(
            tls=True, bandwidth=bandwidth * MIB, auto_converge=False, timeout=timeout
        )
        info = out["info"]
        return {
            "side": "plain pre-copy",
            "run": i + 1,
            "completed": out["completed"],
            "seconds": round(out["wall_s"], 1),
            "downtime": info.get("downtime", "-"),
            "throttle": info.get("cpu-throttle-percentage", 0),
            "iterations": info.get("ram", {}).get("dirty-sync-count", "-"),
            "actions": "-",
        }

    def policy(i: int) -> dict[str, Any]:
        src = where[0]
        code, wall, lines, err = migrate_lines(
            plan.nodes[src],
            vm,
            plan.nodes[1 - src].name,
            "--bandwidth",
            str(bandwidth),
            "--timeout",
            str(timeout),
        )
        progress = [ln for ln in lines if "progress" in ln or "throttle_percent" in ln]
        throttle = max((int(_throttle(ln)) for ln in progress), default=0)
        summary = lines[-1] if code == 0 else {}
        if code == 0:
            where[0] = 1 - src
        return {
            "side": "corral policy",
            "run": i + 1,
            "completed": code == 0,
            "seconds": round(wall, 1),
            "downtime": summary.get("downtime_ms", "-"),
            "throttle": throttle,
            "iterations": summary.get("iterations", "-"),
            "actions": "; ".join(summary.get("policy_actions", [])) or err[-120:],
        }

    try:
        sides = interleaved({"plain": plain, "policy": policy}, runs)
    finally:
        floor.stop()
        corral_ok(plan.nodes[where[0]], "vm", "kill", vm)
    result.rows = sides["plain"] + sides["policy"]
    result.raw = sides
    return result


def _throttle(line: dict[str, Any]) -> int:
    progress = line.get("progress", line)
    return int(progress.get("throttle_percent", 0) or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--dirty", type=int, default=64, help="MiB the guest rewrites")
    parser.add_argument("--bandwidth", type=int, default=16, help="MiB/s")
    parser.add_argument("--timeout", type=int, default=120, help="seconds")
    args = parser.parse_args()
    with bench_lab() as plan:
        run(plan, args.runs, args.dirty, args.bandwidth, args.timeout).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
