"""Where a VM's files are, seen from a migration: which of its directories (data, config,
system) both nodes share, which of its disks must be copied (`--with-local-disks`) and which
stay where they are, and preflight's reasons about them.

A directory is shared when both nodes report the same storage identity for it. A disk is
shared when it lies inside a shared directory; any other disk is local to the source: on
storage only the source has, or outside the VM directories where nothing can tell, which is
treated the same (copying a disk that was in fact shared costs time, never data).

Pure: the caller gathers the facts (both nodes' storage, the local disks' sizes).

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.hypervisors.disk_copy_contract import DiskUsage
from corral.model import DiskSpec, VmSpec

ROLES = ("data", "config", "system")
MIB = 1024 * 1024
FLAG = "--with-local-disks"


@dataclass(frozen=True)
class DiskPlacement:
    index: int
    disk: DiskSpec
    shared: bool


def shared_roles(source: dict[str, Any], target: dict[str, Any]) -> set[str]:
    """The VM directories both nodes share (`storage` facts of each)."""
    found = set()
    for role in ROLES:
        identity = source.get(role, {}).get("id")
        if identity and identity == target.get(role, {}).get("id"):
            found.add(role)
    return found


def place_disks(
    spec: VmSpec, source: dict[str, Any], target: dict[str, Any]
) -> list[DiskPlacement]:
    """Each disk of `spec`, shared or local, by the nodes' `storage` facts."""
    roots = [Path(str(source[r]["path"])) for r in shared_roles(source, target)]
    return [
        DiskPlacement(i, disk, any(root in disk.path.parents for root in roots))
        for i, disk in enumerate(spec.disks)
    ]


def local_indexes(spec: VmSpec, source: dict[str, Any], target: dict[str, Any]) -> list[int]:
    return [p.index for p in place_disks(spec, source, target) if not p.shared]


def size_text(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / MIB:.1f} MiB" if n < 10 * 1024 * MIB else f"{n / 1024**3:.1f} GiB"


@dataclass(frozen=True)
class DiskQuestion:
    """What preflight judges about storage: the spec, both nodes' `storage` facts, the
    local disks' sizes as the source measured them, the VM's checkpoints, and the flags."""

    spec: VmSpec
    source: str
    target: str
    source_storage: dict[str, Any]
    target_storage: dict[str, Any]
    usage: dict[int, DiskUsage]
    checkpoints: tuple[str, ...] = ()
    with_local_disks: bool = False
    drop_checkpoints: bool = False


Reason = tuple[str, str, str]  # code, message, node


def to_copy(q: DiskQuestion) -> tuple[list[int], int | None]:
    """The local disks, and the bytes a copy sends (None: a size is unknown)."""
    local = local_indexes(q.spec, q.source_storage, q.target_storage)
    sizes = [q.usage[i].allocated_bytes if i in q.usage else None for i in local]
    return local, (None if None in sizes else sum(s for s in sizes if s is not None))


def storage_reasons(q: DiskQuestion) -> list[Reason]:
    """Every reason the VM's files stop the move."""
    shared = shared_roles(q.source_storage, q.target_storage)
    local, copy_bytes = to_copy(q)
    reasons: list[Reason] = []
    if not q.with_local_disks:
        for role in ROLES:
            if role in shared:
                continue
            s, d = q.source_storage.get(role, {}), q.target_storage.get(role, {})
            reasons.append(
                (
                    "storage-not-shared",
                    f"the {role} directory is not shared: {q.source} has {s.get('path')} (id"
                    f" {s.get('id')}), {q.target} has {d.get('path')} (id {d.get('id')});"
                    f" {FLAG} moves the VM anyway",
                    q.target,
                )
            )
        for i in local:
            disk = q.spec.disks[i]
            usage = q.usage.get(i)
            virtual = "" if usage is None else f" of {size_text(usage.virtual_bytes)}"
            reasons.append(
                (
                    "local-disks",
                    f"disk {i} ({disk.path}) is on storage {q.target} does not share:"
                    f" {size_text(usage.allocated_bytes if usage else None)}{virtual} to"
                    f" copy; add {FLAG} to copy it while the VM runs",
                    q.source,
                )
            )
        return reasons
    if local and q.checkpoints and not q.drop_checkpoints:
        reasons.append(checkpoint_reason(q, "its disks are copied"))
    elif "system" not in shared and q.checkpoints and not q.drop_checkpoints:
        reasons.append(checkpoint_reason(q, "the system directory is not shared"))
    free = q.target_storage.get("data", {}).get("free_bytes")
    if local and copy_bytes is not None and isinstance(free, int) and free < copy_bytes:
        reasons.append(
            (
                "disk-space",
                f"{q.target}'s data directory has {size_text(free)} free; the copy of"
                f" {len(local)} disk(s) needs {size_text(copy_bytes)}",
                q.target,
            )
        )
    return reasons


def checkpoint_reason(q: DiskQuestion, why: str) -> Reason:
    names = ", ".join(q.checkpoints)
    return (
        "checkpoints",
        f"VM {q.spec.name} has {len(q.checkpoints)} checkpoint(s) ({names}) that cannot move"
        f" ({why}; a checkpoint's disk state lives inside the source's images): they would stay"
        f" behind on {q.source}; add --drop-checkpoints to delete them with the move",
        q.source,
    )


def localized(
    spec: VmSpec, copies: dict[int, int], disk_path: Callable[[str, int, str], Path]
) -> VmSpec:
    """`spec` as the target runs it: each copied disk (index -> virtual bytes) where
    `disk_path(vm, index, format)` puts it (the target's own data directory), as a disk
    corral created (deleted with the VM)."""
    disks = list(spec.disks)
    for index, virtual in copies.items():
        disks[index] = disks[index].model_copy(
            update={
                "path": disk_path(spec.name, index, disks[index].format),
                "size_mib": max(1, math.ceil(virtual / MIB)),
            }
        )
    return spec.model_copy(update={"disks": tuple(disks)})
