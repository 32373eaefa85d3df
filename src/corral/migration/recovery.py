"""`corral migrate --recover VM`, and what an agent does at start for a migration its journal
left unfinished: ask both nodes what really runs, and repair the records from that reality.
The VM must end on exactly one node, and never be started twice.
"""

from __future__ import annotations

import contextlib
from typing import Any

from corral.errors import CorralError, NotFoundError
from corral.hypervisors.base import RunState
from corral.migration.orchestrator import MigrationServices
from corral.model import VmSpec


def _remote(services: MigrationServices, node: str, vm: str) -> dict[str, Any] | None:
    try:
        with services.peer(node) as client:
            answer: dict[str, Any] = client.get(f"/runtime/{vm}")
            return answer
    except CorralError:
        return None


def recover_vm(
    services: MigrationServices, vm: str, target: str, spec: VmSpec | None
) -> dict[str, Any]:
    """Find where `vm` runs (here or on `target`) and make the records say so."""
    vms, driver = services.vms, services.driver
    layout = vms.layout(vm)
    local = vms.status(vm).state
    if local == RunState.RUNNING:
        with contextlib.suppress(CorralError):
            if driver.migration_status(layout).state in ("setup", "active", "device"):
                driver.migration_cancel(layout)
    remote = _remote(services, target, vm)
    remote_state = remote["observed"] if remote else "unreachable"
    found = {
        "vm": vm,
        "source": services.node,
        "target": target,
        "source_state": local.value,
        "target_state": remote_state,
    }
    if remote_state == "running":
        if local != RunState.STOPPED:
            vms.driver.kill(layout)
        record_spec = spec
        with contextlib.suppress(NotFoundError):
            record_spec = vms.record(vm).spec
            vms.inventory.remove(vm)
        if remote and not remote.get("recorded") and record_spec is not None:
            with services.peer(target) as client:
                client.post(f"/runtime/{vm}/adopt", {"spec": record_spec.model_dump(mode="json")})
        if record_spec is not None:
            with contextlib.suppress(CorralError):
                vms.driver.undefine(record_spec, layout, delete_disks=False, keep_logs=True)
        found["outcome"] = f"runs on {target}; {services.node}'s copy stopped and unrecorded"
        return found
    if remote_state == "unreachable" and local in (RunState.MIGRATED, RunState.PAUSED):
        found["outcome"] = (
            f"{target} does not answer and the source holds a paused copy;"
            " left as is so the VM cannot run twice: recover again once"
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
        vms.inventory.set_state(vm, RunState.RUNNING.value, "recovered: it runs here")
        found["outcome"] = f"runs on {services.node}"
    else:
        with contextlib.suppress(NotFoundError):
            vms.inventory.set_state(
                vm, RunState.STOPPED.value, "recovered: it runs on no node; not restarted"
            )
        found["outcome"] = "runs on no node (its QEMU died); not restarted"
    return found
