"""The migration routes of the agent's API, and the runtime routes a peer uses during a
migration or its recovery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from corral.agent import migration_desk
from corral.agent.access import Access, allow, caller_of
from corral.agent.api_models import TASK_ID_PATTERN, AdoptRequest
from corral.agent.node_agent import NodeAgent
from corral.api_errors import AccessDenied
from corral.errors import ConflictError, NotFoundError
from corral.hypervisors.base import RunState
from corral.migration.options import MigrationOptions
from corral.model import NAME_PATTERN

VmName = Annotated[str, Path(pattern=NAME_PATTERN)]
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN)]
MAX_PROBE = 256 * 1024 * 1024
PROBE_CHUNK = bytes(1024 * 1024)

MEMBER = [allow(Access.MEMBER)]


def migration_routes(app: FastAPI, agent: NodeAgent, owner_of: Any) -> None:
    def on_owner(request: Request, vm: str, method: str, path: str, body: Any = None) -> Any | None:
        """Forward the local CLI's request to the VM's owner when it is another node; None
        when it is this one. A member's request is never forwarded (no member speaks
        through another): it is refused with the owner's name."""
        if not caller_of(request).local:
            owner = agent.vms.record(vm).owner  # a member's request asks no one else
            if owner != agent.name:
                raise ConflictError(f"VM {vm} is owned by {owner}: ask {owner}")
            return None
        owner = migration_desk.locate_owner(agent, vm)
        if owner == agent.name:
            return None
        with agent.peer(owner) as client:
            return client.request(method, path, json=body, timeout=120)

    @app.post("/v1/migrations", tags=["migrations"], status_code=202, dependencies=MEMBER)
    def start_migration(body: MigrationOptions, request: Request) -> dict[str, Any]:
        """Live-migrate a VM to `target`: runs on the VM's owner; refused (409) with every
        preflight reason, or answered with the migration task to follow."""
        forwarded = on_owner(request, body.vm, "POST", "/migrations", body.model_dump(mode="json"))
        if forwarded is not None:
            result: dict[str, Any] = forwarded
            return result
        return migration_desk.desk(agent).start(body, owner_of(request))

    @app.post("/v1/migrations/plan", tags=["migrations"], dependencies=MEMBER)
    def plan_migration(body: MigrationOptions, request: Request) -> dict[str, Any]:
        """The preflight's answer and an estimate (RAM, dirty rate, link, expected time,
        convergence), moving nothing."""
        forwarded = on_owner(
            request, body.vm, "POST", "/migrations/plan", body.model_dump(mode="json")
        )
        if forwarded is not None:
            result: dict[str, Any] = forwarded
            return result
        return migration_desk.desk(agent).plan(body)

    @app.get("/v1/migrations", tags=["migrations"], dependencies=MEMBER)
    def list_migrations(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """Migrations this node started, newest first, with their journals."""
        return [m.to_json() for m in agent.journal.recent(limit)]

    @app.post("/v1/migrations/{vm}/cancel", tags=["migrations"], dependencies=MEMBER)
    def cancel_migration(vm: VmName, request: Request) -> dict[str, Any]:
        """Abort the VM's migration in progress; it keeps running where it was."""
        forwarded = on_owner(request, vm, "POST", f"/migrations/{vm}/cancel")
        if forwarded is not None:
            result: dict[str, Any] = forwarded
            return result
        return migration_desk.desk(agent).cancel(vm)

    @app.post("/v1/migrations/{vm}/recover", tags=["migrations"], dependencies=MEMBER)
    def recover_migration(vm: VmName) -> dict[str, Any]:
        """Ask both nodes of the VM's last migration what runs; repair the records."""
        return migration_desk.desk(agent).recover(vm)


def runtime_routes(app: FastAPI, agent: NodeAgent) -> None:
    def recorded(vm: str) -> bool:
        try:
            agent.vms.record(vm)
        except NotFoundError:
            return False
        return True

    @app.get("/v1/runtime/{vm}", tags=["runtime"], dependencies=MEMBER)
    def runtime(vm: VmName) -> dict[str, Any]:
        """What runs here under that VM's name, recorded or not."""
        status = agent.vms.status(vm)
        return {
            "vm": vm,
            "node": agent.name,
            "observed": status.state.value,
            "pid": status.pid,
            "recorded": recorded(vm),
        }

    @app.post("/v1/runtime/{vm}/adopt", tags=["runtime"], dependencies=MEMBER)
    def adopt(vm: VmName, body: AdoptRequest) -> dict[str, Any]:
        """Record a VM that runs here without a record (after an interrupted migration);
        with the disks this node copied in, where they are here."""
        spec = migration_desk.arrived_spec(agent, body.spec)
        agent.check_spec_paths(spec)
        if spec.name != vm or agent.vms.status(vm).state != RunState.RUNNING:
            raise ConflictError(f"{vm} does not run here; nothing to adopt")
        agent.vms.inventory.add(spec, agent.name, RunState.RUNNING.value)
        agent.vms.inventory.note(vm, "adopted by migration recovery")
        return {"adopted": vm}

    @app.post("/v1/runtime/{vm}/discard", tags=["runtime"], dependencies=MEMBER)
    def discard(vm: VmName) -> dict[str, Any]:
        """Stop a QEMU of that name that is not running a recorded VM (a half-arrived
        migration)."""
        if recorded(vm):
            raise ConflictError(f"{vm} is recorded here; use vm kill instead")
        layout = agent.vms.layout(vm)
        if agent.vms.status(vm).state == RunState.RUNNING:
            raise ConflictError(f"{vm} runs here; it will not be discarded")
        agent.driver.kill(layout)
        return {"discarded": vm}

    @app.post("/v1/runtime/incoming/{task_id}/release", tags=["runtime"], dependencies=MEMBER)
    def release(task_id: TaskId, request: Request) -> dict[str, Any]:
        """The source of a migration with copied disks: every mirror ended clean, so the
        receive task may stop serving the disks and resume the VM. Only the member that
        created the receive task (or the local CLI)."""
        task = agent.tasks.get(task_id)
        caller = caller_of(request)
        if task.kind != "migration.receive":
            raise NotFoundError(f"task {task_id} is not a migration's receive task")
        if not caller.local and task.owner != caller.node:
            raise AccessDenied(f"{caller} did not start the migration of task {task_id}")
        if task.state.finished:
            raise ConflictError(f"the receive task {task_id} is {task.state.value} already")
        agent.releases.release(task_id)
        return {"released": task_id}

    @app.get("/v1/probe/stream", tags=["node"], dependencies=MEMBER)
    def probe(size: Annotated[int, Query(ge=1, le=MAX_PROBE)]) -> Response:
        """`size` bytes, for measuring the link between two nodes (streamed from one
        PROBE_CHUNK-sized buffer: a request costs the same memory whatever its size)."""

        def zeros() -> Iterator[bytes]:
            left = size
            while left > 0:
                yield PROBE_CHUNK[: min(left, len(PROBE_CHUNK))]
                left -= len(PROBE_CHUNK)

        return StreamingResponse(
            zeros(),
            media_type="application/octet-stream",
            headers={"content-length": str(size)},
        )
