"""Orchestration overhead: `corral migrate` (CLI -> agents -> QEMU) against the floor, a
script that drives the two QEMUs over QMP by hand (bench/floor.py). Same test guest (idle,
256 MiB and 1 GiB), same lab link, same QEMU command line and migration parameters, TLS on
and off; the two sides interleaved, several runs each."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

from bench.floor import FloorVm
from bench.harness import (
    Result,
    bench_lab,
    cell,
    command_line,
    corral,
    create_vm,
    image,
    interleaved,
    journal_phases,
    migrate,
    migrate_api,
    spread,
)
from corral.lab.plan import LabPlan


@dataclass
class Case:
    """One guest size: a corral VM and a floor VM, each moved back and forth."""

    plan: LabPlan
    vm: str
    floor: FloorVm
    tls: bool = False
    corral_node: int = 0

    def corral_side(self, _: int) -> dict[str, Any]:
        src = self.corral_node
        args = [] if self.tls else ["--insecure"]
        wall, summary = migrate(self.plan.nodes[src], self.vm, self.plan.nodes[1 - src].name, *args)
        self.corral_node = 1 - src
        phases = journal_phases(self.plan.nodes[src], summary["migration_id"])
        return {"wall_s": wall, "qemu_ms": summary["qemu_total_ms"], "phases": phases}

    def api_side(self, _: int) -> dict[str, Any]:
        src = self.corral_node
        wall, summary = migrate_api(
            self.plan.nodes[src], self.vm, self.plan.nodes[1 - src].name, tls=self.tls
        )
        self.corral_node = 1 - src
        phases = journal_phases(self.plan.nodes[src], summary["migration_id"])
        return {"wall_s": wall, "qemu_ms": summary["qemu_total_ms"], "phases": phases}

    def floor_side(self, _: int) -> dict[str, Any]:
        out = self.floor.migrate(tls=self.tls)
        return {"wall_s": out["wall_s"], "qemu_ms": out["info"]["total-time"]}


def plane(samples: list[dict[str, Any]]) -> float:
    """The median time a side spent beyond QEMU's own total time (seconds)."""
    return float(statistics.median(s["wall_s"] - s["qemu_ms"] / 1000 for s in samples))


def run(plan: LabPlan, runs: int, sizes: list[int]) -> Result:
    img = image()
    result = Result(
        "overhead",
        "Orchestration overhead: corral migrate against QMP by hand",
        "Wall time of one live migration of an idle test guest between the two lab nodes."
        " *floor*: bench/floor.py starts the target QEMU with `-incoming defer`, sets the"
        " same capabilities and parameters corral sets, runs `migrate`, polls"
        " `query-migrate` every 50 ms until it completes, waits for the target to run and"
        " stops the source's QEMU (and deletes its tap). *corral API*: what a program already"
        " running sees (a web page, a script): `POST /v1/migrations` on the source's"
        " socket, then the task followed as the agent streams it (preflight, deferred receive"
        " task on the target, policy loop, handoff, the source stopped). *corral CLI*: `corral"
        " migrate VM NODE --json` as a user runs it: the same plus a Python process that"
        " starts (interpreter, typer). The three sides interleaved; each cell is median"
        " (min-max), n runs; extra = the side's median - the floor's median. QEMU's own"
        " transfer time varies from run to run by more than the control plane costs (TLS"
        " most), so the *control-plane* columns compare wall time less QEMU's total time"
        " (what the orchestration itself took): median(wall - QEMU) of the side less the"
        " floor's.",
        [
            ("memory", "guest"),
            ("tls", "TLS"),
            ("floor", "floor s"),
            ("api", "corral API s"),
            ("corral", "corral CLI s"),
            ("api_extra", "API extra s"),
            ("extra", "CLI extra s"),
            ("qemu_floor", "QEMU ms, floor"),
            ("qemu_corral", "QEMU ms, corral"),
            ("api_plane", "control plane, API s"),
            ("cli_plane", "control plane, CLI s"),
        ],
    )
    for memory in sizes:
        host = 20 + sizes.index(memory) * 2
        case = Case(plan, f"ovh{memory}", FloorVm.make(plan, img, f"flr{memory}", host + 1, memory))
        create_vm(plan, img, case.vm, host=host, memory_mib=memory)
        case.floor.start()
        try:
            for tls in (False, True):
                case.tls = tls
                sides = interleaved(
                    {"floor": case.floor_side, "api": case.api_side, "corral": case.corral_side},
                    runs,
                )
                f = spread([s["wall_s"] for s in sides["floor"]])
                a = spread([s["wall_s"] for s in sides["api"]])
                c = spread([s["wall_s"] for s in sides["corral"]])
                result.rows.append(
                    {
                        "memory": f"{memory} MiB",
                        "tls": "on" if tls else "off",
                        "floor": cell([s["wall_s"] for s in sides["floor"]]),
                        "api": cell([s["wall_s"] for s in sides["api"]]),
                        "corral": cell([s["wall_s"] for s in sides["corral"]]),
                        "api_extra": f"{a['median'] - f['median']:+.2f}",
                        "extra": f"{c['median'] - f['median']:+.2f}",
                        "qemu_floor": statistics.median(s["qemu_ms"] for s in sides["floor"]),
                        "qemu_corral": statistics.median(
                            s["qemu_ms"] for s in sides["corral"] + sides["api"]
                        ),
                        "api_plane": f"{plane(sides['api']) - plane(sides['floor']):+.2f}",
                        "cli_plane": f"{plane(sides['corral']) - plane(sides['floor']):+.2f}",
                    }
                )
                result.raw[f"{memory}-{'tls' if tls else 'plain'}"] = sides
                phases: dict[str, list[float]] = {}
                for sample in sides["corral"]:
                    cli = sample["wall_s"] - sample["phases"]["journal_total"]
                    for phase, secs in {**sample["phases"], "cli and follow": cli}.items():
                        phases.setdefault(phase, []).append(secs)
                profile = ", ".join(
                    f"{k} {statistics.median(v):.2f}"
                    for k, v in phases.items()
                    if k != "journal_total"
                )
                result.notes.append(
                    f"{memory} MiB, TLS {'on' if tls else 'off'}: where corral's time goes (s,"
                    f" median, from its journal): {profile}"
                )
        finally:
            case.floor.stop()
            corral(plan.nodes[case.corral_node], "vm", "kill", case.vm)  # idle guests still
            corral(plan.nodes[case.corral_node], "vm", "delete", case.vm)  # cost CPU here
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="guest memory sizes, MiB")
    args = parser.parse_args()
    with bench_lab() as plan:
        run(plan, args.runs, [int(s) for s in args.sizes.split(",")]).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
