"""Where a VM goes when no node is named (`corral migrate VM`, and later a drain): every
other member is judged by the same preflight as a named target, and among those that pass,
the one with the most free memory after placing the VM wins; ties go to the node with the
fewest VMs, then to the name. `auto` is the word for it, so no node may be named `auto`.

Pure: the caller gathers each member's preflight answer and facts.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.migration.preflight import MEMORY_OVERHEAD_MIB, PreflightReason
from corral.model import AUTO


@dataclass(frozen=True)
class Candidate:
    """One member as a target for one VM: preflight's reasons (none: it may go there) and
    what the ranking compares."""

    node: str
    reasons: tuple[PreflightReason, ...]
    free_after_mib: int | None  # its free memory once the VM is placed (None: not known)
    vm_count: int | None

    @property
    def allowed(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "allowed": self.allowed,
            "free_after_mib": self.free_after_mib,
            "vm_count": self.vm_count,
            "reasons": [r.to_json() for r in self.reasons],
        }


def candidate(
    node: str, reasons: list[PreflightReason], facts: dict[str, Any], memory_mib: int
) -> Candidate:
    free = facts.get("memory_free_mib")
    count = facts.get("vm_count")
    return Candidate(
        node,
        tuple(reasons),
        None if not isinstance(free, int) else free - memory_mib - MEMORY_OVERHEAD_MIB,
        count if isinstance(count, int) else None,
    )


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Allowed ones first, best first: most free memory after placing, fewest VMs, name;
    then the refused ones by name."""
    allowed = sorted(
        (c for c in candidates if c.allowed),
        key=lambda c: (-(c.free_after_mib or 0), c.vm_count or 0, c.node),
    )
    refused = sorted((c for c in candidates if not c.allowed), key=lambda c: c.node)
    return allowed + refused


def no_target_reasons(vm: str, ranked: list[Candidate]) -> list[PreflightReason]:
    """Why no member may take `vm`: every member's reasons, or that there is none."""
    if not ranked:
        return [PreflightReason("no-target", f"no other member to move {vm} to", AUTO)]
    return [r for c in ranked for r in c.reasons]


def creation_reasons(
    node: str,
    facts: dict[str, Any],
    *,
    online: bool,
    draining: bool,
    memory_mib: int,
    bridges: list[str],
    machine: str,
) -> list[PreflightReason]:
    """Why a new VM cannot be placed on `node` (`vm create --node auto`), from the facts
    of its last heartbeat: offline, draining, too little free memory, a bridge it lacks, a
    machine type its QEMU does not know."""
    if not online:
        return [PreflightReason("target-offline", f"{node} is offline", node)]
    reasons = []
    if draining:
        reasons.append(PreflightReason("target-draining", f"{node} is being drained", node))
    free = facts.get("memory_free_mib")
    needed = memory_mib + MEMORY_OVERHEAD_MIB
    if not isinstance(free, int) or free < needed:
        reasons.append(
            PreflightReason("memory", f"{node} has {free} MiB free; the VM needs {needed}", node)
        )
    present = set(facts.get("bridges", []))
    for bridge in bridges:
        if bridge not in present:
            reasons.append(PreflightReason("bridge", f"{node} has no bridge {bridge!r}", node))
    known = facts.get("machine_types")
    if known and machine not in known:
        reasons.append(
            PreflightReason("machine-type", f"{node}'s QEMU has no machine type {machine}", node)
        )
    return reasons
