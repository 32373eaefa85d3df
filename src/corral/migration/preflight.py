"""Preflight: every reason a migration cannot start, checked before anything moves.

Pure: it judges facts gathered by the caller (the VM's record and state on the source, both
nodes' facts as their agents report them now) and returns every failed check, not just the
first, each with a code, a message and the node it concerns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.hypervisors.disk_copy_contract import DiskUsage
from corral.migration.disk_placement import DiskQuestion, storage_reasons
from corral.model import VmSpec

MEMORY_OVERHEAD_MIB = 64  # QEMU's own memory beside the guest's


@dataclass(frozen=True)
class PreflightReason:
    code: str
    message: str
    node: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class NodeView:
    """A node as the preflight sees it."""

    name: str
    facts: dict[str, Any]
    online: bool = True
    draining: bool = False


@dataclass(frozen=True)
class PreflightInput:
    vm: str
    spec: VmSpec | None  # None: no such VM on the source
    observed: str  # the VM's observed state on the source
    source: NodeView
    target_name: str
    target: NodeView | None  # None: not a member of the cluster
    target_has_vm: bool = False
    disk_usage: dict[int, DiskUsage] = field(default_factory=dict)  # local disks, measured
    checkpoints: tuple[str, ...] = ()  # the VM's checkpoints on the source
    with_local_disks: bool = False
    drop_checkpoints: bool = False


Compatibility = Callable[[VmSpec, dict[str, Any], dict[str, Any]], list[tuple[str, str]]]


def _storage_reasons(inp: PreflightInput, spec: VmSpec, target: NodeView) -> list[PreflightReason]:
    question = DiskQuestion(
        spec=spec,
        source=inp.source.name,
        target=target.name,
        source_storage=inp.source.facts.get("storage", {}),
        target_storage=target.facts.get("storage", {}),
        usage=inp.disk_usage,
        checkpoints=inp.checkpoints,
        with_local_disks=inp.with_local_disks,
        drop_checkpoints=inp.drop_checkpoints,
    )
    return [PreflightReason(*reason) for reason in storage_reasons(question)]


def preflight(inp: PreflightInput, compatible: Compatibility) -> list[PreflightReason]:
    """Every reason the VM cannot move now; empty when it can."""
    src, tgt = inp.source.name, inp.target_name
    reasons: list[PreflightReason] = []
    if inp.spec is None:
        reasons.append(PreflightReason("vm-not-found", f"no VM {inp.vm!r} on {src}", src))
    elif inp.observed != "running":
        reasons.append(
            PreflightReason(
                "vm-not-running", f"VM {inp.vm} is {inp.observed} on {src}, not running", src
            )
        )
    if tgt == src:
        reasons.append(PreflightReason("same-node", f"VM {inp.vm} already runs on {src}", tgt))
        return reasons
    target = inp.target
    if target is None:
        reasons.append(
            PreflightReason("target-unknown", f"{tgt} is not a member of the cluster", tgt)
        )
        return reasons
    if not target.online:
        reasons.append(PreflightReason("target-offline", f"{tgt} is offline", tgt))
        return reasons
    if target.draining:
        reasons.append(PreflightReason("target-draining", f"{tgt} is being drained", tgt))
    sf, tf = inp.source.facts, target.facts
    if sf.get("arch") != tf.get("arch"):
        reasons.append(
            PreflightReason("arch", f"{src} is {sf.get('arch')}, {tgt} is {tf.get('arch')}", tgt)
        )
    if inp.target_has_vm:
        reasons.append(
            PreflightReason("name-conflict", f"a VM named {inp.vm!r} already exists on {tgt}", tgt)
        )
    if inp.spec is None:
        return reasons
    spec = inp.spec
    for code, message in compatible(spec, sf, tf):
        reasons.append(PreflightReason(code, message, tgt))
    free = int(tf.get("memory_free_mib", 0))
    needed = spec.memory_mib + MEMORY_OVERHEAD_MIB
    if free < needed:
        reasons.append(
            PreflightReason(
                "memory", f"{tgt} has {free} MiB free; VM {inp.vm} needs {needed} MiB", tgt
            )
        )
    bridges = set(tf.get("bridges", []))
    for i, nic in enumerate(spec.nics):
        if nic.bridge not in bridges:
            reasons.append(
                PreflightReason(
                    "bridge", f"NIC {i} needs bridge {nic.bridge!r}, which {tgt} lacks", tgt
                )
            )
    reasons += _storage_reasons(inp, spec, target)
    return reasons
