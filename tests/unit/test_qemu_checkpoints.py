"""A checkpoint is restorable only into the spec and QEMU series it was made with."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from corral.errors import ConflictError
from corral.hypervisors.base import CheckpointInfo
from corral.hypervisors.qemu.checkpoints import check_restorable
from corral.hypervisors.qemu.driver import QEMU_STATES
from corral.model import DiskSpec, VmSpec, spec_digest

SPEC = VmSpec(name="vm", memory_mib=256, disks=(DiskSpec(path=Path("/d/vm.qcow2")),))


def info(**changes: object) -> CheckpointInfo:
    base = {
        "name": "c1",
        "vm": "vm",
        "spec_digest": spec_digest(SPEC),
        "hypervisor": "qemu",
        "hypervisor_version": "7.2.22",
        "created_at": time.time(),
        "size_bytes": 1,
        "suspended": False,
    }
    return CheckpointInfo.from_json({**base, **changes})


def test_same_spec_and_series_is_restorable() -> None:
    check_restorable(info(), SPEC, "7.2.9")


def test_another_spec_is_refused_with_both_digests() -> None:
    bigger = SPEC.model_copy(update={"memory_mib": 512})
    with pytest.raises(ConflictError, match="made for another spec of vm") as exc:
        check_restorable(info(), bigger, "7.2.22")
    assert spec_digest(bigger) in exc.value.message


def test_another_qemu_series_is_refused() -> None:
    with pytest.raises(ConflictError, match=r"made by QEMU 6\.2\.0"):
        check_restorable(info(hypervisor_version="6.2.0"), SPEC, "7.2.22")


def test_checkpoint_info_round_trips() -> None:
    original = info(disk_snapshots=("/d/vm.qcow2",))
    assert CheckpointInfo.from_json(original.to_json()) == original


def test_every_qemu_run_state_maps_to_a_corral_state() -> None:
    # The RunState enum of QEMU 7.2's qapi/run-state.json.
    qemu_states = {
        "debug",
        "inmigrate",
        "internal-error",
        "io-error",
        "paused",
        "postmigrate",
        "prelaunch",
        "finish-migrate",
        "restore-vm",
        "running",
        "save-vm",
        "shutdown",
        "suspended",
        "watchdog",
        "guest-panicked",
        "colo",
    }
    assert qemu_states <= set(QEMU_STATES)
