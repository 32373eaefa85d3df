"""The VM and checkpoint routes of the agent's API. Long operations are queued as tasks and
answered with the task, which the caller follows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import PlainTextResponse

from corral.agent.access import Access, allow, caller_of
from corral.agent.api_models import CheckpointCreate, StopRequest
from corral.agent.cluster_view import cluster_vms, find_vm, rank_for_creation
from corral.agent.node_agent import NodeAgent
from corral.model import NAME_PATTERN
from corral.vms.specs import VmRequest

VmName = Annotated[str, Path(pattern=NAME_PATTERN)]
CheckpointName = Annotated[str, Path(pattern=NAME_PATTERN)]

MEMBER = [allow(Access.MEMBER)]
LOCAL = [allow(Access.LOCAL)]


def vm_routes(app: FastAPI, agent: NodeAgent, owner_of: Any) -> None:
    vms = agent.vms

    def task(kind: str, args: dict[str, Any], request: Request) -> dict[str, Any]:
        return agent.runner.submit(kind, args, owner_of(request)).to_json()

    @app.get("/v1/vms", tags=["vms"], dependencies=MEMBER)
    def list_vms() -> list[dict[str, Any]]:
        """VMs this node knows, with their recorded and observed state."""
        return vms.describe_all()

    @app.post("/v1/vms", tags=["vms"], status_code=201, dependencies=MEMBER)
    def create_vm(body: VmRequest, request: Request) -> dict[str, Any]:
        """Define a VM on this node (stopped); disks of `size_mib` are created. Host files
        (disk, kernel, initrd) must lie in the image directories, and only the local CLI
        may name them."""
        agent.check_vm_request(body, from_peer=not caller_of(request).local)
        agent.require_name_free(body.name)
        return vms.describe(agent.create_vm(body))

    @app.post("/v1/placement", tags=["vms"], dependencies=LOCAL)
    def place_new_vm(body: VmRequest) -> list[dict[str, Any]]:
        """Every member ranked as the home of a new VM (`vm create --node auto`), best
        first, each with its reasons, from the facts of its last heartbeat."""
        return [c.to_json() for c in rank_for_creation(agent, body)]

    @app.get("/v1/cluster/vms", tags=["vms"], dependencies=LOCAL)
    def list_cluster_vms() -> dict[str, Any]:
        """Every VM of the cluster with its node, every member asked at once (a short
        timeout); a member that does not answer has its VMs as last seen, `unknown`."""
        return cluster_vms(agent)

    @app.get("/v1/vms/{name}", tags=["vms"], dependencies=MEMBER)
    def show_vm(name: VmName, request: Request, here: bool = False) -> dict[str, Any]:
        """One VM: spec, owner, recorded and observed state, history. The local CLI's
        request finds it on whichever member owns it (`here`: this node's record only)."""
        if caller_of(request).local and not here:
            return find_vm(agent, name)
        info = vms.describe(vms.record(name))
        info["events"] = vms.inventory.events(name)
        return info

    @app.delete("/v1/vms/{name}", tags=["vms"], dependencies=MEMBER)
    def delete_vm(name: VmName, keep_disks: bool = False) -> dict[str, str]:
        """Remove a stopped VM (and the disks corral created for it unless `keep_disks`)."""
        vms.delete(name, keep_disks=keep_disks)
        return {"deleted": name}

    @app.post("/v1/vms/{name}/start", tags=["vms"], status_code=202, dependencies=MEMBER)
    def start_vm(name: VmName, request: Request) -> dict[str, Any]:
        """Start the VM (a task)."""
        vms.changeable(name)
        agent.require_state(f"start {name}", name)
        return task("vm.start", {"vm": name}, request)

    @app.post("/v1/vms/{name}/stop", tags=["vms"], status_code=202, dependencies=MEMBER)
    def stop_vm(name: VmName, body: StopRequest, request: Request) -> dict[str, Any]:
        """ACPI power-off, forced after `timeout` seconds (a task)."""
        vms.changeable(name)
        return task("vm.stop", {"vm": name, "timeout": body.timeout}, request)

    @app.post("/v1/vms/{name}/kill", tags=["vms"], dependencies=MEMBER)
    def kill_vm(name: VmName) -> dict[str, Any]:
        """Stop the VM at once."""
        vms.kill(name)
        return vms.describe(vms.record(name))

    @app.post("/v1/vms/{name}/pause", tags=["vms"], dependencies=MEMBER)
    def pause_vm(name: VmName) -> dict[str, Any]:
        vms.pause(name)
        return vms.describe(vms.record(name))

    @app.post("/v1/vms/{name}/resume", tags=["vms"], dependencies=MEMBER)
    def resume_vm(name: VmName) -> dict[str, Any]:
        agent.require_state(f"resume {name}", name)
        vms.resume(name)
        return vms.describe(vms.record(name))

    @app.get(
        "/v1/vms/{name}/console",
        tags=["vms"],
        response_class=PlainTextResponse,
        dependencies=MEMBER,
    )
    def console(name: VmName, lines: Annotated[int, Query(ge=1, le=100_000)] = 50) -> str:
        """The last lines of the VM's serial console."""
        return vms.console(name, lines)

    @app.get("/v1/vms/{name}/checkpoints", tags=["checkpoints"], dependencies=MEMBER)
    def list_checkpoints(name: VmName) -> list[dict[str, Any]]:
        return [c.to_json() for c in vms.checkpoints(name)]

    @app.post(
        "/v1/vms/{name}/checkpoints", tags=["checkpoints"], status_code=202, dependencies=MEMBER
    )
    def create_checkpoint(name: VmName, body: CheckpointCreate, request: Request) -> dict[str, Any]:
        """Save the VM's memory, devices and disks (a task); it runs on unless `suspend`."""
        vms.changeable(name)
        return task(
            "checkpoint.create", {"vm": name, "name": body.name, "suspend": body.suspend}, request
        )

    @app.post(
        "/v1/vms/{name}/checkpoints/{checkpoint}/restore",
        tags=["checkpoints"],
        status_code=202,
        dependencies=MEMBER,
    )
    def restore_checkpoint(
        name: VmName, checkpoint: CheckpointName, request: Request
    ) -> dict[str, Any]:
        """Bring the VM back exactly as the checkpoint saved it (a task)."""
        vms.changeable(name)
        return task("checkpoint.restore", {"vm": name, "name": checkpoint}, request)

    @app.delete(
        "/v1/vms/{name}/checkpoints/{checkpoint}", tags=["checkpoints"], dependencies=MEMBER
    )
    def delete_checkpoint(name: VmName, checkpoint: CheckpointName) -> dict[str, str]:
        vms.delete_checkpoint(name, checkpoint)
        return {"deleted": checkpoint}
