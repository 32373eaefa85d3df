"""`make bench`: every benchmark in one lab, one after another, then the plots. Each writes
bench/results/NAME.json and NAME.md with the command that made it."""

from __future__ import annotations

import argparse
import time

from bench import (
    control_plane,
    convergence,
    downtime,
    overhead,
    plan_accuracy,
    plots,
    throughput,
)
from bench.harness import bench_lab, command_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    args = parser.parse_args()
    runs = 1 if args.quick else 5  # comparisons: the median of 5 at least
    command = command_line()
    started = time.monotonic()
    with bench_lab() as plan:
        overhead.run(plan, runs, [256, 1024]).write(command)
        downtime.run(plan, runs, [0, 16, 64, 128]).write(command)
        throughput.run(plan, 1 if args.quick else 2, [1, 2, 4]).write(command)
        convergence.run(plan, 2, dirty=64, bandwidth=16, timeout=120).write(command)
        control_plane.run(plan, 200, 4, 1 if args.quick else 2).write(command)
        plan_accuracy.run(plan, runs, [0, 16, 64]).write(command)
    for path in plots.plot_all():
        print(f"plot: {path}")
    print(f"make bench: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
