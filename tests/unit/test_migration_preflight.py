"""Preflight lists every reason a migration cannot start, each with its code and node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.hypervisors.bhyve.driver import BhyveDriver
from corral.hypervisors.disk_copy_contract import DiskUsage
from corral.hypervisors.qemu.driver import QemuDriver
from corral.migration.disk_placement import ROLES, localized, place_disks
from corral.migration.preflight import NodeView, PreflightInput, PreflightReason, preflight
from corral.model import CpuSpec, DiskSpec, NicSpec, VmSpec

MIB = 1024 * 1024
SPEC = VmSpec(
    name="web",
    memory_mib=1024,
    cpu=CpuSpec(model="qemu64"),
    disks=(DiskSpec(path=Path("/shared/data/web/disk0.qcow2")),),
    nics=(NicSpec(bridge="br0", mac="52:54:00:00:00:01", tap="vt0"),),
)


def facts(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "arch": "x86_64",
        "hypervisor": "qemu",
        "hypervisor_version": "7.2.22",
        "accelerator": "tcg",
        "cpu_models": ["qemu64", "Westmere"],
        "machine_types": ["pc-q35-7.2"],
        "memory_free_mib": 8192,
        "bridges": ["br0"],
        "storage": {
            role: {"path": f"/shared/{role}", "id": f"id-{role}"}
            for role in ("data", "config", "system")
        },
    }
    return {**base, **changes}


def check(
    target: NodeView | None = None,
    *,
    observed: str = "running",
    spec: VmSpec | None = SPEC,
    has_vm: bool = False,
    target_name: str = "node2",
) -> list[tuple[str, str]]:
    inp = PreflightInput(
        "web",
        spec,
        observed,
        NodeView("node1", facts()),
        target_name,
        target if target is not None else NodeView("node2", facts()),
        has_vm,
    )
    return [(r.code, r.node) for r in preflight(inp, QemuDriver().compatible)]


def test_a_healthy_pair_passes() -> None:
    assert check() == []


def test_each_failed_check_is_named() -> None:
    assert check(observed="paused") == [("vm-not-running", "node1")]
    assert check(spec=None, observed="missing") == [("vm-not-found", "node1")]
    assert check(has_vm=True) == [("name-conflict", "node2")]
    assert check(target_name="node1") == [("same-node", "node1")]
    assert check(NodeView("node2", facts(), online=False)) == [("target-offline", "node2")]
    assert check(NodeView("node2", facts(), draining=True)) == [("target-draining", "node2")]
    assert check(NodeView("node2", facts(arch="aarch64"))) == [("arch", "node2")]
    assert check(NodeView("node2", facts(cpu_models=["Westmere"]))) == [("cpu-model", "node2")]
    assert check(NodeView("node2", facts(machine_types=["pc-q35-6.2"]))) == [
        ("machine-type", "node2")
    ]
    assert check(NodeView("node2", facts(hypervisor_version="6.2.0"))) == [
        ("qemu-version", "node2")
    ]
    assert check(NodeView("node2", facts(accelerator="kvm"))) == [("accelerator", "node2")]
    assert check(NodeView("node2", facts(memory_free_mib=1000))) == [("memory", "node2")]
    assert check(NodeView("node2", facts(bridges=["br1"]))) == [("bridge", "node2")]


def test_an_unknown_target_is_reported_alone() -> None:
    inp = PreflightInput("web", SPEC, "running", NodeView("node1", facts()), "node9", None)
    assert [(r.code, r.node) for r in preflight(inp, QemuDriver().compatible)] == [
        ("target-unknown", "node9")
    ]


def test_storage_that_is_not_shared_names_the_directory() -> None:
    storage = facts()["storage"]
    local = {**storage, "config": {"path": "/var/lib/corral/config", "id": "other"}}
    inp = PreflightInput(
        "web",
        SPEC,
        "running",
        NodeView("node1", facts()),
        "node2",
        NodeView("node2", facts(storage=local)),
    )
    [reason] = preflight(inp, QemuDriver().compatible)
    assert reason.code == "storage-not-shared"
    assert "config directory is not shared" in reason.message


def test_a_disk_outside_the_vm_directories_counts_as_local() -> None:
    spec = SPEC.model_copy(update={"disks": (DiskSpec(path=Path("/elsewhere/x.qcow2")),)})
    assert check(spec=spec) == [("local-disks", "node1")]


LOCAL = {role: {"path": f"/local/{role}", "id": f"n2-{role}"} for role in ROLES}


def local_check(
    *,
    spec: VmSpec = SPEC,
    usage: dict[int, DiskUsage] | None = None,
    target_storage: dict[str, Any] | None = None,
    **flags: Any,
) -> list[PreflightReason]:
    inp = PreflightInput(
        "web",
        spec,
        "running",
        NodeView("node1", facts()),
        "node2",
        NodeView("node2", facts(storage=target_storage or LOCAL)),
        disk_usage={0: DiskUsage(1 << 30, 100 * MIB)} if usage is None else usage,
        **flags,
    )
    return preflight(inp, QemuDriver().compatible)


def test_without_the_flag_a_local_disk_is_refused_naming_the_flag_and_the_bytes() -> None:
    reasons = local_check()
    [disk] = [r for r in reasons if r.code == "local-disks"]
    assert "--with-local-disks" in disk.message
    assert "100.0 MiB of 1024.0 MiB to copy" in disk.message
    assert "disk 0 (/shared/data/web/disk0.qcow2)" in disk.message
    unshared = [r.message for r in reasons if r.code == "storage-not-shared"]
    assert len(unshared) == 3
    assert all("--with-local-disks" in m for m in unshared)


def test_with_the_flag_unshared_directories_and_local_disks_pass() -> None:
    assert local_check(with_local_disks=True) == []


def test_with_the_flag_the_targets_data_directory_must_hold_the_copy() -> None:
    small = {**LOCAL, "data": {**LOCAL["data"], "free_bytes": 50 * MIB}}
    [reason] = local_check(with_local_disks=True, target_storage=small)
    assert reason.code == "disk-space"
    assert reason.node == "node2"
    assert "50.0 MiB free" in reason.message
    assert "needs 100.0 MiB" in reason.message
    roomy = {**LOCAL, "data": {**LOCAL["data"], "free_bytes": 200 * MIB}}
    assert local_check(with_local_disks=True, target_storage=roomy) == []


def test_checkpoints_that_cannot_move_are_named_and_need_drop_checkpoints() -> None:
    [reason] = local_check(with_local_disks=True, checkpoints=("a", "b"))
    assert reason.code == "checkpoints"
    assert "2 checkpoint(s) (a, b)" in reason.message
    assert "--drop-checkpoints" in reason.message
    assert local_check(with_local_disks=True, checkpoints=("a",), drop_checkpoints=True) == []


def test_mixed_disks_copy_only_the_local_ones() -> None:
    spec = SPEC.model_copy(
        update={
            "disks": (
                DiskSpec(path=Path("/shared/data/web/disk0.qcow2")),
                DiskSpec(path=Path("/scratch/web-1.qcow2")),
            )
        }
    )
    storage = facts()["storage"]
    placed = place_disks(spec, storage, storage)
    assert [(p.index, p.shared) for p in placed] == [(0, True), (1, False)]
    both_shared = {**storage}
    reasons = local_check(spec=spec, usage={1: DiskUsage(MIB, MIB)}, target_storage=both_shared)
    assert [(r.code, r.message.split(" (")[0]) for r in reasons] == [("local-disks", "disk 1")]
    assert (
        local_check(
            spec=spec,
            usage={1: DiskUsage(MIB, MIB)},
            target_storage=both_shared,
            with_local_disks=True,
        )
        == []
    )


def test_a_hypervisor_without_disk_copy_refuses_the_flag() -> None:
    refusals = BhyveDriver().option_refusals(postcopy=False, channels=1, local_disks=True)
    assert [code for code, _ in refusals] == ["disk-copy"]
    assert "no disk copy" in refusals[0][1]
    assert "--with-local-disks" in refusals[0][1]
    assert QemuDriver().option_refusals(postcopy=False, channels=1, local_disks=True) == []


def test_the_target_puts_copied_disks_in_its_own_data_directory() -> None:
    spec = SPEC.model_copy(
        update={"disks": (DiskSpec(path=Path("/shared/data/web/disk0.qcow2")),) * 2}
    )

    def disk_path(vm: str, index: int, fmt: str) -> Path:
        return Path("/local/data") / vm / f"disk{index}.{fmt}"

    moved = localized(spec, {1: 3 * MIB + 1}, disk_path)
    assert moved.disks[0] == spec.disks[0]  # shared: stays where it is
    assert moved.disks[1].path == Path("/local/data/web/disk1.qcow2")
    assert moved.disks[1].size_mib == 4  # created here: deleted with the VM
    assert moved.cpu == spec.cpu
    assert moved.nics == spec.nics


def test_every_reason_is_listed_not_just_the_first() -> None:
    bad = NodeView("node2", facts(arch="aarch64", memory_free_mib=10, bridges=[], cpu_models=[]))
    codes = {code for code, _ in check(bad, has_vm=True)}
    assert codes == {"arch", "memory", "bridge", "cpu-model", "name-conflict"}


def test_post_copy_is_refused_with_a_disk_copy() -> None:
    refusals = QemuDriver().option_refusals(postcopy=True, channels=1, local_disks=True)
    assert [code for code, _ in refusals] == ["postcopy"]
    assert "--with-local-disks" in refusals[0][1]


def test_a_capped_copy_keeps_a_small_buffer_so_the_cap_holds_throughout() -> None:
    from corral.hypervisors.qemu.disk_copy import MIRROR_BUFFER, mirror_buffer

    assert mirror_buffer(0) == MIRROR_BUFFER  # no cap: the large buffer
    assert mirror_buffer(8 << 20) == 2 << 20  # 8 MiB/s: a quarter second
    assert mirror_buffer(1 << 20) == 1 << 20  # never below 1 MiB
    assert mirror_buffer(10 << 30) == MIRROR_BUFFER


def test_the_disk_flags_need_the_disk_copy() -> None:
    from pydantic import ValidationError

    from corral.migration.options import MigrationOptions

    for flag in ("keep_source_disks", "drop_checkpoints"):
        with pytest.raises(ValidationError, match=f"{flag} applies only with with_local_disks"):
            MigrationOptions(vm="a", target="b", **{flag: True})
        MigrationOptions(vm="a", target="b", with_local_disks=True, **{flag: True})
