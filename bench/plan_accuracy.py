"""How right `corral migrate --plan` is: for an idle guest and guests rewriting 16 and
64 MiB, ask the plan (as `corral migrate --plan` does), then migrate and compare its
expected time with the migration's own total time, round after round (a round's plan learns
from the migrations before it, as a cluster's does)."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench.harness import (
    Result,
    bench_lab,
    command_line,
    corral,
    create_vm,
    image,
    migrate,
)
from corral.client import AgentClient
from corral.lab.agents import agent_socket
from corral.lab.plan import LabPlan


def plan_of(plan: LabPlan, src: int, vm: str) -> dict[str, Any]:
    with AgentClient(socket_path=agent_socket(plan.nodes[src])) as client:
        answer: dict[str, Any] = client.post(
            "/migrations/plan", {"vm": vm, "target": plan.nodes[1 - src].name}, timeout=120
        )
    if not answer["allowed"]:
        raise RuntimeError(f"the plan refuses {vm}: {answer['reasons']}")
    estimate: dict[str, Any] = answer["estimate"]
    return estimate


def error_pct(predicted: float | None, measured: float) -> float | None:
    return None if predicted is None else (predicted - measured) / measured * 100


def run(plan: LabPlan, rounds: int, dirty: list[int]) -> Result:
    img = image()
    result = Result(
        "plan-accuracy",
        "The plan's estimate against the migration it predicts",
        "For each guest: `POST /v1/migrations/plan` (what `corral migrate VM NODE --plan`"
        " asks), then `corral migrate VM NODE` (TLS on, the default) and the migration's own"
        " total time from its summary (the CLI's start, ~0.3 s here, is not part of it)."
        " The plan's time is the copy (what the guest touched, then what it dirties, at the"
        " rate the stream got in the past migrations to that node, else the link probe's)"
        " plus the fixed part those migrations took. Error = (predicted - measured) /"
        " measured. Rounds alternate the direction.",
        [
            ("guest", "guest"),
            ("round", "round"),
            ("basis", "rate from"),
            ("to_send", "to send MiB"),
            ("dirty", "dirty MiB/s"),
            ("predicted", "predicted s"),
            ("measured", "measured s"),
            ("error", "error %"),
        ],
    )
    for n, mib in enumerate(dirty):
        vm = f"pln{mib}"
        create_vm(plan, img, vm, host=60 + n, memory_mib=256, dirty_mib=mib)
        src = 0
        errors: list[float] = []
        try:
            for r in range(rounds):
                est = plan_of(plan, src, vm)
                _, summary = migrate(plan.nodes[src], vm, plan.nodes[1 - src].name)
                measured = float(summary["total_s"])
                predicted = est.get("expected_s")
                err = error_pct(predicted, measured)
                if err is not None:
                    errors.append(err)
                result.rows.append(
                    {
                        "guest": "idle" if mib == 0 else f"rewrites {mib} MiB",
                        "round": r + 1,
                        "basis": est.get("basis", "-"),
                        "to_send": round(est.get("to_send_bytes", 0) / 2**20),
                        "dirty": round(est.get("dirty_rate_bytes", 0) / 2**20, 1),
                        "predicted": "missing" if predicted is None else predicted,
                        "measured": round(measured, 2),
                        "error": "missing" if err is None else f"{err:+.0f}",
                    }
                )
                result.raw.setdefault(vm, []).append({"estimate": est, "summary": summary})
                src = 1 - src
        finally:
            corral(plan.nodes[src], "vm", "kill", vm)
            corral(plan.nodes[src], "vm", "delete", vm)
        within = sum(1 for e in errors if abs(e) <= 30)
        result.notes.append(
            f"{'idle' if mib == 0 else f'rewrites {mib} MiB'}: {within} of {rounds} plans"
            " within 30 %"
            + (
                f", median error {statistics.median(errors):+.0f} %"
                if errors
                else ", no plan gave a time"
            )
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dirty", default="0,16,64", help="MiB each guest rewrites")
    args = parser.parse_args()
    with bench_lab() as plan:
        dirty = [int(d) for d in args.dirty.split(",")]
        run(plan, args.rounds, dirty).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
