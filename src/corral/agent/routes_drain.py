"""Maintenance routes: drain this node, end its maintenance, and take in a stopped VM a
draining member re-homes here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Request

from corral.agent import drain_desk
from corral.agent.access import Access, allow, caller_of
from corral.agent.api_models import AdoptRequest
from corral.agent.node_agent import NodeAgent
from corral.errors import ConflictError
from corral.migration.drain import DrainOptions
from corral.model import NAME_PATTERN
from corral.vms.rehome import take_in

VmName = Annotated[str, Path(pattern=NAME_PATTERN)]
MEMBER = [allow(Access.MEMBER)]


def maintenance_routes(app: FastAPI, agent: NodeAgent, owner_of: Any) -> None:
    @app.post("/v1/node/drain", tags=["node"], status_code=202, dependencies=MEMBER)
    def drain(body: DrainOptions, request: Request) -> dict[str, Any]:
        """Mark this node draining (no VM is placed here, migrations here are refused) and
        queue the drain task that moves its VMs away; answered with the task to follow. A
        member asks on behalf of its local CLI (`corral node drain NODE`)."""
        return drain_desk.begin(agent, body, owner_of(request))

    @app.post("/v1/node/undrain", tags=["node"], dependencies=MEMBER)
    def undrain() -> dict[str, Any]:
        """End maintenance: cancel the drain in progress (migrations in flight finish or
        roll back) and take VMs again."""
        return drain_desk.end(agent)

    @app.post("/v1/runtime/{vm}/rehome", tags=["runtime"], dependencies=MEMBER)
    def rehome(vm: VmName, body: AdoptRequest, request: Request) -> dict[str, Any]:
        """Record a stopped VM whose owner (a draining member) hands it over: its disks are
        on storage both share, so nothing is copied. Refused while this node drains."""
        if agent.draining:
            raise ConflictError(f"{agent.name} is being drained: it takes no VM")
        if body.spec.name != vm:
            raise ConflictError(f"the spec is VM {body.spec.name}'s, not {vm}'s")
        agent.check_spec_paths(body.spec)
        caller = caller_of(request)
        recorded = take_in(agent.vms, body.spec, caller.node or agent.name)
        return {"rehomed": vm, "node": agent.name, "recorded_now": recorded}
