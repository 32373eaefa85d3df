"""`make faults`: run the fault-injection suite N times and write the matrix of outcomes
(fault x where the VM ended, TCP connection, time) to bench/results/faults-DATE.md, with the
command that made it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ended_on(item: dict[str, object]) -> str:
    nodes = item.get("runs_on")
    return "+".join(str(n) for n in nodes) if isinstance(nodes, list) and nodes else "none (lost)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    report = Path(tempfile.mkdtemp(prefix="corral-faults-")) / "outcomes.jsonl"
    failures = 0
    for run in range(1, args.runs + 1):
        print(f"run {run}/{args.runs}", flush=True)
        env = dict(os.environ, CORRAL_FAULTS_REPORT=str(report))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/faults", "-q"], cwd=ROOT, env=env, check=False
        )
        failures += proc.returncode != 0
    rows: dict[str, list[dict[str, object]]] = defaultdict(list)
    if report.exists():
        for line in report.read_text().splitlines():
            item = json.loads(line)
            rows[str(item.pop("fault"))].append(item)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    out = ROOT / "bench" / "results" / f"faults-{stamp}.md"
    lines = [
        f"# Fault matrix, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Command: `make faults` (`python bench/faults_matrix.py --runs {args.runs}`), on"
        f" {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()},"
        " QEMU TCG. Each row is one fault injected into a live migration of a guest that"
        " writes its disk and streams its counter to a client; the outcome is checked as"
        " tests/faults/scenario.py says (exactly one node runs the VM, no lost write, the"
        " counter never went back, records agree, nothing left behind).",
        "",
        "| fault | runs | passed | VM ended on | TCP connection survived"
        " | seconds (median, min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for fault, items in sorted(rows.items()):
        ends = ", ".join(sorted({ended_on(i) for i in items}))
        tcp = sorted({str(i.get("tcp_survived", "-")) for i in items})
        secs = [float(str(i["seconds"])) for i in items]
        lines.append(
            f"| {fault} | {args.runs} | {len(items)} | {ends} | {', '.join(tcp)} |"
            f" {statistics.median(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) |"
        )
    lines += ["", f"Runs with a failing test: {failures} of {args.runs}.", ""]
    out.write_text("\n".join(lines))
    print(out.read_text())
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
