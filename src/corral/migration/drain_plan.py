"""Where a drain sends each VM, and when: placement (migration/placement.py) counting the
VMs already moving, under the drain's limits.

- **Counting the VMs already moving.** A target's free memory, as its facts report it, does
  not yet show the VMs on their way to it (QEMU takes guest memory as the pages arrive), so
  the memory of every VM moving in is taken off it, and each counts as one VM more.
- **Limits.** At most `parallel` migrations at once in the whole cluster (every member's
  migrations count, not only this drain's), and at most `per_node` at once into or out of
  any node but the drained one. The drained node sends up to `parallel`: it is the one
  being emptied, and a limit of 1 out of it would make `parallel` meaningless for a drain.
- **Waiting.** When every node that may take the VM is at its limit, the VM waits for a
  migration to end; when no node may take it, it stays, with every node's reasons.

Pure: the drain (migration/drain.py) gathers the rankings and the cluster's migrations.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from corral.migration.disk_placement import FLAG
from corral.migration.placement import Candidate, no_target_reasons, rank
from corral.migration.preflight import PreflightReason


@dataclass(frozen=True)
class DrainLimits:
    parallel: int = 2  # migrations at once, cluster-wide
    per_node: int = 1  # migrations at once into or out of any other node


@dataclass
class Moving:
    """The migrations in flight now, as the drain counts them."""

    total: int = 0  # in the whole cluster
    per_node: dict[str, int] = field(default_factory=dict)  # into or out of each node
    memory_in_mib: dict[str, int] = field(default_factory=dict)  # this drain's, per target

    def add(self, target: str, memory_mib: int) -> None:
        self.total += 1
        self.per_node[target] = self.per_node.get(target, 0) + 1
        self.memory_in_mib[target] = self.memory_in_mib.get(target, 0) + memory_mib


@dataclass(frozen=True)
class Pick:
    """A drain's decision for one VM: a target, or wait, or stay (with the reasons)."""

    target: str | None
    wait: bool
    reasons: tuple[PreflightReason, ...]
    ranking: tuple[Candidate, ...]


def counted(candidate: Candidate, moving: Moving, tried: dict[str, str], vm: str) -> Candidate:
    """`candidate` with the VMs moving into it counted, and refused when this drain's
    migration of `vm` to it failed already."""
    node = candidate.node
    reasons = list(candidate.reasons)
    incoming = moving.memory_in_mib.get(node, 0)
    free = candidate.free_after_mib
    if free is not None:
        free -= incoming
        if incoming and free < 0 and candidate.allowed:
            reasons.append(
                PreflightReason(
                    "memory",
                    f"{node} has too little memory once the {incoming} MiB of VMs moving"
                    f" to it arrive",
                    node,
                )
            )
    if node in tried:
        reasons.append(
            PreflightReason(
                "migration-failed", f"the migration of {vm} to {node} failed: {tried[node]}", node
            )
        )
    count = (
        None if candidate.vm_count is None else candidate.vm_count + moving.per_node.get(node, 0)
    )
    return Candidate(node, tuple(reasons), free, count)


def pick_target(
    vm: str, ranked: list[Candidate], moving: Moving, limits: DrainLimits, tried: dict[str, str]
) -> Pick:
    """The best node for `vm` now, counting what moves; wait when every allowed node is
    busy; stay when none is allowed."""
    ranking = rank([counted(c, moving, tried, vm) for c in ranked])
    allowed = [c for c in ranking if c.allowed]
    if not allowed:
        return Pick(None, False, tuple(no_target_reasons(vm, ranking)), tuple(ranking))
    if moving.total >= limits.parallel:
        return Pick(None, True, (), tuple(ranking))
    free = [c for c in allowed if moving.per_node.get(c.node, 0) < limits.per_node]
    if not free:
        return Pick(None, True, (), tuple(ranking))
    return Pick(free[0].node, False, (), tuple(ranking))


# What does not apply to a stopped VM that is only re-homed (nothing runs, nothing is sent):
NOT_FOR_STOPPED = frozenset({"vm-not-running", "memory"})


def _for_stopped(reason: PreflightReason) -> PreflightReason:
    if reason.code not in ("local-disks", "storage-not-shared"):
        return reason
    why = re.split(f";( add)? {FLAG}", reason.message)[0]
    text = f"a stopped VM moves only on shared storage: {why}"
    return PreflightReason(reason.code, text, reason.node)


def for_stopped(ranked: list[Candidate]) -> list[Candidate]:
    """The ranking of a live migration, judged for re-homing a stopped VM: its storage must
    be shared (no disk is copied: a local disk keeps it here), its running does not count."""
    judged = []
    for c in ranked:
        reasons = [_for_stopped(r) for r in c.reasons if r.code not in NOT_FOR_STOPPED]
        judged.append(Candidate(c.node, tuple(reasons), c.free_after_mib, c.vm_count))
    return rank(judged)
