"""The bhyve console's nmdm unit: listed, never looked up; chosen from the VM's name; a unit
another VM on the node recorded is never handed out twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from corral.errors import HypervisorError
from corral.hypervisors.bhyve import console


def test_units_are_read_from_the_listing(tmp_path: Path) -> None:
    for name in ("nmdm1000A", "nmdm1000B", "nmdm7B", "nmdmXA", "tty0", "nmdm12C"):
        (tmp_path / name).write_text("")
    assert console.units_in(tmp_path) == {1000, 7}
    assert console.units_in(tmp_path / "missing") == set()


def test_a_unit_is_chosen_from_the_name_and_skips_the_taken() -> None:
    first = console.pick_unit("vm1", lambda unit: False)
    assert first == console.pick_unit("vm1", lambda unit: False)  # stable for a name
    assert first in console.UNITS
    second = console.pick_unit("vm1", lambda unit: unit == first)
    assert second != first
    with pytest.raises(HypervisorError, match="no free nmdm unit"):
        console.pick_unit("vm1", lambda unit: True)


def test_units_recorded_by_other_vms(tmp_path: Path) -> None:
    for name, unit in (("a", 1001), ("b", 1002)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "console.json").write_text(json.dumps({"unit": unit}))
    (tmp_path / "c").mkdir()  # no console yet
    assert console.recorded_elsewhere(tmp_path.iterdir()) == {1001, 1002}


def test_the_logger_appends_what_the_other_side_writes(tmp_path: Path) -> None:
    """follow() on a pty: what is written on one side lands in the log, and it stops once
    the VM is gone, after reading what was left."""
    master, slave = os.openpty()
    side = tmp_path / "nmdm1B"
    side.symlink_to(os.ttyname(slave))
    os.write(master, b"COUNTER 1 0.10\n")
    log = tmp_path / "console.log"
    calls = iter([True, False])
    console.follow(side, log, lambda: next(calls, False))
    assert log.read_bytes() == b"COUNTER 1 0.10\n"
    os.close(master)
    os.close(slave)
