"""Re-homing a stopped VM: its owner changes, nothing is copied (its storage is shared by
both nodes, which the drain checked with preflight's storage rules).

The order keeps the records true at every step: the new owner records the VM first (and
writes its spec where its config directory is, when that is not the same directory), and
only then does the old owner drop its record and its runtime files (taps, sockets), never
the disks. A failure between the two leaves both records, never none; the old owner's is
removed by running the re-home again (the new owner's answer is idempotent).

Must never import: agent, cli, lab.
"""

from __future__ import annotations

from corral.errors import ConflictError, NotFoundError
from corral.hypervisors.base import RunState
from corral.model import VmSpec
from corral.vms.service import VmService


def take_in(vms: VmService, spec: VmSpec, source: str) -> bool:
    """The new owner's side: record `spec` here as stopped. True when recorded now, False
    when this node already owns it (a re-run).

    :raise ConflictError: another VM of that name is recorded here, a QEMU of that name
        runs here, or a disk is not on this node's storage."""
    try:
        existing = vms.record(spec.name)
    except NotFoundError:
        existing = None
    if existing is not None:
        if existing.owner == vms.node and existing.spec == spec:
            return False
        raise ConflictError(f"a VM named {spec.name!r} is already recorded on {vms.node}")
    if vms.status(spec.name).state != RunState.STOPPED:
        raise ConflictError(f"a VM named {spec.name!r} runs on {vms.node} already")
    for i, disk in enumerate(spec.disks):
        if not disk.path.exists():
            raise ConflictError(f"disk {i} ({disk.path}) is not on {vms.node}'s storage")
    vms.driver.define(spec)
    spec_file = vms.dirs.spec_file(spec.name)
    if not spec_file.exists():
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(spec.model_dump_json(indent=2) + "\n")
    vms.inventory.add(spec, vms.node, RunState.STOPPED.value)
    vms.inventory.note(spec.name, f"re-homed from {source} (stopped; nothing copied)")
    return True


def hand_over(vms: VmService, name: str, target: str, *, config_shared: bool) -> None:
    """The old owner's side, once `target` recorded the VM: drop the record and the runtime
    files here; the spec file too unless the config directory is the target's as well."""
    record = vms.local(name)
    vms.driver.undefine(record.spec, vms.layout(name), delete_disks=False, keep_logs=True)
    if not config_shared:
        vms.dirs.spec_file(name).unlink(missing_ok=True)
    vms.inventory.remove(name)
