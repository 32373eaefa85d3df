"""`corral migrate --recover VM`, what an agent does at start for a migration it was running
when it died, and how a migration settles when the target's answer after switchover is not
a plain success: ask both nodes what really runs, and repair the records from that reality.
The VM must end on exactly one node, and never be started twice.

`where` in the answer: "target" (the target runs it; the source's copy is stopped and
unrecorded), "source" (it runs on the source; a half-arrived copy on the target is
discarded), "nowhere" (its QEMU died; the records say so, nothing restarts it), "unknown"
(the target does not answer and the source holds a paused copy: left as is, so that the VM
cannot run twice; ask again once the target answers).
"""

from __future__ import annotations

import contextlib
from typing import Any

from corral.errors import CorralError, NotFoundError
from corral.hypervisors.base import RunState
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


def _target_runs_it(
    services: MigrationServices, vm: str, target: str, remote: dict[str, Any], spec: VmSpec | None
) -> None:
    vms = services.vms
    layout = vms.layout(vm)
    vms.driver.kill(layout)
    record_spec = spec
    with contextlib.suppress(NotFoundError):
        record_spec = vms.record(vm).spec
        vms.inventory.remove(vm)
    if not remote.get("recorded") and record_spec is not None:
        with services.peer(target) as client:
            client.post(f"/runtime/{vm}/adopt", {"spec": record_spec.model_dump(mode="json")})
    if record_spec is not None:
        with contextlib.suppress(CorralError):
            vms.driver.undefine(record_spec, layout, delete_disks=False, keep_logs=True)


def recover_vm(
    services: MigrationServices, vm: str, target: str, spec: VmSpec | None
) -> dict[str, Any]:
    """Find where `vm` runs (here or on `target`) and make the records say so."""
    vms, driver = services.vms, services.driver
    layout = vms.layout(vm)
    local = vms.status(vm).state
    if local == RunState.RUNNING:
        with contextlib.suppress(CorralError):
            if driver.migration_status(layout).state.in_flight:
                driver.migration_cancel(layout)
    remote = remote_runtime(services, target, vm)
    remote_state = remote["observed"] if remote else "unreachable"
    found: dict[str, Any] = {
        "vm": vm,
        "source": services.node,
        "target": target,
        "source_state": local.value,
        "target_state": remote_state,
    }
    if remote is not None and remote_state == "running":
        _target_runs_it(services, vm, target, remote, spec)
        found["where"] = "target"
        found["outcome"] = f"runs on {target}; {services.node}'s copy stopped and unrecorded"
        return found
    if remote is None and local in (RunState.MIGRATED, RunState.PAUSED):
        found["where"] = "unknown"
        found["outcome"] = (
            f"{target} does not answer and {services.node} holds a paused"
            " copy; left as is so the VM cannot run twice: recover again once"
            f" {target} answers"
        )
        return found
    if remote is not None and remote_state != "stopped":
        with services.peer(target) as client:
            client.post(f"/runtime/{vm}/discard")
    if local in (RunState.MIGRATED, RunState.PAUSED):
        driver.migration_resume_source(layout)
        local = RunState.RUNNING
    if local == RunState.RUNNING:
        with contextlib.suppress(NotFoundError):
            vms.inventory.set_state(vm, RunState.RUNNING.value, "recovered: it runs here")
        found["where"] = "source"
        found["outcome"] = f"runs on {services.node}"
    else:
        with contextlib.suppress(NotFoundError):
            vms.inventory.set_state(
                vm, RunState.STOPPED.value, "recovered: it runs on no node; not restarted"
            )
        found["where"] = "nowhere"
        found["outcome"] = "runs on no node (its QEMU died); not restarted"
    return found
