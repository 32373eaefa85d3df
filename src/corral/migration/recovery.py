"""`corral migrate --recover VM`, what an agent does at start for a migration it was running
when it died, and how a migration settles when the target's answer after switchover is not
a plain success: ask both nodes what really runs, and repair the records from that reality.
The VM must end on exactly one node, and never be started twice.

`where` in the answer, and what is done in each case: recovery_plan.py, the decision table
(target, source, nowhere, unknown, both).
"""

from __future__ import annotations

import contextlib
from typing import Any

from corral.errors import CorralError, NotFoundError
from corral.hypervisors.base import RunState, VmLayout
from corral.migration.journal import MigrationJournal, MigrationPhase
from corral.migration.recovery_plan import RecoveryPlan, Where, plan_recovery
from corral.migration.services import MigrationServices
from corral.model import VmSpec


def remote_runtime(services: MigrationServices, node: str, vm: str) -> dict[str, Any] | None:
    """What `node` says runs under `vm`'s name, or None when it does not answer."""
    try:
        with services.peer(node) as client:
            answer: dict[str, Any] = client.get(f"/runtime/{vm}")
            return answer
    except CorralError:
        return None


def _stop_source_copy(
    services: MigrationServices, vm: str, target: str, adopt: bool, spec: VmSpec | None
) -> None:
    """The target runs the VM: the source's copy goes, and the target records it."""
    vms = services.vms
    record_spec = spec
    with contextlib.suppress(NotFoundError):
        record_spec = vms.record(vm).spec
        vms.inventory.remove(vm)
    if adopt and record_spec is not None:
        with services.peer(target) as client:
            client.post(f"/runtime/{vm}/adopt", {"spec": record_spec.model_dump(mode="json")})
    with contextlib.suppress(CorralError):
        services.driver.migration_finalize_source(record_spec, vms.layout(vm), success=True)


def _drop_disk_copy(services: MigrationServices, vm: str, layout: VmLayout) -> None:
    """A disk copy the interrupted migration left running here is dropped: the source's
    images were never switched to it (a hypervisor without disk copy has none)."""
    with contextlib.suppress(CorralError):
        disks = list(range(len(services.vms.record(vm).spec.disks)))
        if disks and "disk-copy" in services.driver.migration_features:
            services.driver.disk_mirror_end(layout, disks, abandon=True)


def _observed(remote: dict[str, Any] | None) -> RunState | None:
    if remote is None:
        return None
    try:
        return RunState(str(remote.get("observed")))
    except ValueError:
        return RunState.ERROR  # a state this node does not know: not running


def recover_vm(
    services: MigrationServices, vm: str, target: str, spec: VmSpec | None
) -> dict[str, Any]:
    """Find where `vm` runs (here or on `target`) and make the records say so, as
    `plan_recovery` decides."""
    vms, driver = services.vms, services.driver
    layout = vms.layout(vm)
    local = vms.status(vm).state
    if local == RunState.RUNNING:
        with contextlib.suppress(CorralError):
            if driver.migration_status(layout).state.in_flight:
                driver.migration_cancel(layout)
    if local != RunState.STOPPED:  # before it may be resumed: its images are its own
        _drop_disk_copy(services, vm, layout)
    remote = remote_runtime(services, target, vm)
    plan = plan_recovery(local, _observed(remote), bool(remote and remote.get("recorded")))
    found: dict[str, Any] = {
        "vm": vm,
        "source": services.node,
        "target": target,
        "source_state": local.value,
        "target_state": remote["observed"] if remote else "unreachable",
        "where": plan.where.value,
    }
    found["outcome"] = apply_recovery(services, vm, target, plan, spec)
    if plan.resume_source and vms.status(vm).state != RunState.RUNNING:
        found["where"] = Where.NOWHERE.value  # not resumed: etcd says it is not ours
    return found


def recover_migration(
    services: MigrationServices, journal: MigrationJournal, migration_id: str, vm: str, target: str
) -> dict[str, Any]:
    """Recover `vm` after its migration `migration_id` to `target` (by hand, or for a task
    its agent was running when it died) and write the outcome to the journal."""
    spec = None
    with contextlib.suppress(NotFoundError):
        spec = services.vms.record(vm).spec
    result = recover_vm(services, vm, target, spec)
    journal.step(migration_id, MigrationPhase.RECOVERED, str(result["outcome"]))
    return result


def held_back(services: MigrationServices, vm: str) -> str | None:
    """Why this node's paused copy of `vm` must stay paused (with the state in etcd: etcd
    does not say this node owns it, nor can its own lease vouch), recording it on the VM;
    None when it may run again."""
    allowed, because = services.may_resume(vm)
    if allowed:
        return None
    with contextlib.suppress(NotFoundError):
        services.vms.inventory.set_state(vm, RunState.PAUSED.value, f"not resumed: {because}")
    return because


def apply_recovery(
    services: MigrationServices, vm: str, target: str, plan: RecoveryPlan, spec: VmSpec | None
) -> str:
    """Carry out `plan`; returns what came of it, in words."""
    vms, driver, here = services.vms, services.driver, services.node
    layout = vms.layout(vm)
    if plan.stop_source:
        _stop_source_copy(services, vm, target, plan.adopt_on_target, spec)
    if plan.pause_source:
        with contextlib.suppress(CorralError):
            driver.pause(layout)
        with contextlib.suppress(NotFoundError):
            vms.inventory.note(vm, f"runs on both {here} and {target}: {here}'s copy paused")
    if plan.discard_target:
        with services.peer(target) as client:
            client.post(f"/runtime/{vm}/discard")
    if plan.resume_source:
        because = held_back(services, vm)
        if because is not None:
            return (
                f"runs on no node: {here}'s copy stays paused ({because}); once etcd gives it"
                f" back to {here}, 'corral migrate {vm} --recover' runs it on"
            )
        driver.migration_finalize_source(spec, layout, success=False)
    if plan.record_source is not None:
        reason = {
            RunState.RUNNING: "recovered: it runs here",
            RunState.STOPPED: "recovered: it runs on no node; not restarted",
        }.get(plan.record_source, "recovered")
        with contextlib.suppress(NotFoundError):
            vms.inventory.set_state(vm, plan.record_source.value, reason)
    return {
        Where.TARGET: f"runs on {target}; {here}'s copy stopped and unrecorded",
        Where.SOURCE: f"runs on {here}",
        Where.NOWHERE: "runs on no node (its QEMU died); not restarted",
        Where.UNKNOWN: (
            f"{target} does not answer and {here} does not run it; left as is so the VM"
            f" cannot run twice: recover again once {target} answers"
        ),
        Where.BOTH: (
            f"runs on both {here} and {target}: {here}'s copy is paused so that only one"
            f" writes; keep one with 'corral vm kill {vm}' on the other node, then recover"
            " again"
        ),
    }[plan.where]
