"""Preflight lists every reason a migration cannot start, each with its code and node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.hypervisors.qemu.driver import QemuDriver
from corral.migration.preflight import NodeView, PreflightInput, preflight
from corral.model import CpuSpec, DiskSpec, NicSpec, VmSpec

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


def test_a_disk_outside_the_vm_directories_cannot_be_checked() -> None:
    spec = SPEC.model_copy(update={"disks": (DiskSpec(path=Path("/elsewhere/x.qcow2")),)})
    assert check(spec=spec) == [("disk-not-shared", "node1")]


def test_every_reason_is_listed_not_just_the_first() -> None:
    bad = NodeView("node2", facts(arch="aarch64", memory_free_mib=10, bridges=[], cpu_models=[]))
    codes = {code for code, _ in check(bad, has_vm=True)}
    assert codes == {"arch", "memory", "bridge", "cpu-model", "name-conflict"}
