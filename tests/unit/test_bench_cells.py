"""Benchmark numbers are honest: a value that could not be measured is shown as missing,
never as 0, every cell says how many samples it has, and a side with no sample at all
fails loudly; the probes say "not measured" rather than 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bench.harness import cell, measured

from corral.errors import EnvironmentProblem
from corral.lab.probes import CounterClient, PingMeter


def test_a_cell_counts_its_samples_and_its_missing_ones() -> None:
    assert cell([10.0, 30.0, 20.0], digits=0) == "20 (10-30), n=3"
    assert cell([10.0, None, 20.0], digits=0) == "15 (10-20), n=2, 1 missing"
    assert cell([None, None]) == "missing"


def test_a_side_with_nothing_measured_fails_loudly() -> None:
    assert measured([1.0, None], "wall") == [1.0]
    with pytest.raises(RuntimeError, match="wall: no sample could be measured"):
        measured([None, None], "wall")


def test_a_stream_with_under_two_lines_has_no_gap() -> None:
    stream = CounterClient.__new__(CounterClient)
    stream.arrived = [5.0]
    assert stream.largest_arrival_gap() is None
    stream.arrived = [5.0, 5.1, 5.6]
    assert stream.largest_arrival_gap() == pytest.approx(0.5)
    assert stream.largest_arrival_gap(since=5.05) == pytest.approx(0.5)


# Stands for a ping that stops on SIGINT without its summary; it sets its own handler, as
# ping does, since a process started in the background may inherit SIGINT ignored.
SILENT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_ping_without_its_summary_is_not_zero_lost() -> None:
    quiet = subprocess.Popen(
        [sys.executable, "-c", SILENT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert quiet.stdout is not None
    assert quiet.stdout.readline().strip() == "ready"  # its handler is in place
    with pytest.raises(EnvironmentProblem, match="ping printed no summary"):
        PingMeter(quiet, 0.01).stop()
