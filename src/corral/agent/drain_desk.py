"""The agent's side of maintenance: a drain's services built from this node
(migration/drain.py runs it), starting and ending maintenance, and counting the cluster's
migrations in flight."""

from __future__ import annotations

import logging
import time
from typing import Any

from corral.agent import migration_desk
from corral.agent.node_agent import NodeAgent
from corral.cluster.maintenance import set_draining
from corral.errors import ConflictError, CorralError, NotFoundError
from corral.migration.disk_placement import shared_roles
from corral.migration.drain import ChildState, DrainOptions, DrainServices, OwnedVm
from corral.migration.drain_plan import Moving
from corral.migration.options import MigrationOptions
from corral.migration.placement import Candidate
from corral.migration.source_checks import candidates
from corral.model import AUTO
from corral.tasks.states import TaskState
from corral.vms.rehome import hand_over

KIND = "node.drain"
IN_FLIGHT = (TaskState.QUEUED, TaskState.RUNNING)
log = logging.getLogger(__name__)


def owned(agent: NodeAgent) -> list[OwnedVm]:
    found = []
    for record in agent.vms.inventory.all():
        if record.owner != agent.name:
            continue
        try:
            observed = agent.vms.status(record.name).state.value
        except CorralError:
            observed = "unknown"
        found.append(OwnedVm(record.name, observed, record.spec.memory_mib))
    return found


def migration_options(vm: str, target: str, opts: DrainOptions) -> MigrationOptions:
    """What a drain asks of each migration."""
    return MigrationOptions(
        vm=vm,
        target=target,
        bandwidth_mib=opts.bandwidth_mib,
        with_local_disks=opts.with_local_disks,
    )


def ranking(agent: NodeAgent, vm: str, opts: DrainOptions) -> list[Candidate]:
    asked = migration_options(vm, AUTO, opts)
    return candidates(migration_desk.migration_services(agent), asked)


def start(agent: NodeAgent, parent: str, vm: str, target: str, opts: DrainOptions) -> str:
    """A child migration of drain task `parent`; its id."""
    asked = MigrationOptions(
        vm=vm,
        target=target,
        bandwidth_mib=opts.bandwidth_mib,
        with_local_disks=opts.with_local_disks,
    )
    owner = agent.tasks.get(parent).owner
    # The drain's placement ran this preflight for this target a moment ago (at most
    # drain.AHEAD_S: placed ahead while the slots were busy); the target's receive task
    # checks again what it must (name, storage identities, maintenance).
    started = migration_desk.desk(agent).start(asked, owner, parent=parent, judged=True)
    return str(started["task"]["id"])


def rehome(agent: NodeAgent, vm: str, target: str) -> None:
    """Move stopped `vm`'s ownership to `target` (vms/rehome.py has the order)."""
    with agent.vms.hold(vm, f"being re-homed to {target}"):
        record = agent.vms.local(vm)
        with agent.peer(target) as client:
            facts = client.get("/facts")
            client.post(f"/runtime/{vm}/rehome", {"spec": record.spec.model_dump(mode="json")})
        shared = shared_roles(agent.facts().get("storage", {}), facts.get("storage", {}))
        hand_over(agent.vms, vm, target, config_shared="config" in shared)


def recover(agent: NodeAgent, vm: str) -> None:
    """`corral migrate --recover VM` here: both nodes asked, the records repaired."""
    outcome = migration_desk.desk(agent).recover(vm)
    log.info("drain: recovered %s: %s", vm, outcome.get("outcome"))


def child(agent: NodeAgent, task_id: str) -> ChildState:
    task = agent.tasks.get(task_id)
    return ChildState(task.state, task.result, task.error)


def moving(agent: NodeAgent, exclude: set[str]) -> Moving:
    """The migrations queued or running in the cluster (every member's `migration.send`
    tasks, this node's too) but `exclude`: each counts once in all, and once for its source
    and its target. A member that does not answer counts for nothing."""
    found = Moving()

    def sends(name: str) -> list[dict[str, Any]]:
        if name == agent.name:
            return [t.to_json() for t in agent.tasks.recent(set(IN_FLIGHT), limit=1000)]
        try:
            with agent.peer(name) as client:
                listed: list[dict[str, Any]] = client.get(
                    "/tasks", state=[s.value for s in IN_FLIGHT], limit=1000
                )
                return listed
        except CorralError as exc:
            log.debug("cannot count %s's migrations: %s", name, exc)
            return []

    now = time.time()
    names = [
        n.name
        for n in agent.registry.list()
        if n.name == agent.name or n.online(now, agent.settings.offline_after)
    ]
    for name, tasks in zip(names, agent.fan_out(sends, names), strict=True):
        for task in tasks:
            if task["kind"] != "migration.send" or task["id"] in exclude:
                continue
            found.total += 1
            for node in (name, task["args"]["options"]["target"]):
                found.per_node[node] = found.per_node.get(node, 0) + 1
    return found


def drain_services(agent: NodeAgent, task_id: str) -> DrainServices:
    return DrainServices(
        node=agent.name,
        owned=lambda: owned(agent),
        ranking=lambda vm, opts: ranking(agent, vm, opts),
        start=lambda vm, target, opts: start(agent, task_id, vm, target, opts),
        rehome=lambda vm, target: rehome(agent, vm, target),
        child=lambda child_id: child(agent, child_id),
        moving=lambda exclude: moving(agent, exclude),
        recover=lambda vm: recover(agent, vm),
        version=agent.tasks.changes.version,
        wait=agent.tasks.changes.wait_any,
    )


def current_drain(agent: NodeAgent) -> str | None:
    """The id of this node's drain queued or running, if any."""
    for task in agent.tasks.recent(set(IN_FLIGHT), limit=1000):
        if task.kind == KIND:
            return task.id
    return None


def begin(agent: NodeAgent, opts: DrainOptions, owner: str) -> dict[str, Any]:
    """Mark this node draining and queue its drain task.

    :raise ConflictError: a drain of this node runs already (its task is named), or this
        node is in no cluster."""
    if not agent.pki.member:
        raise ConflictError(f"{agent.name} is in no cluster: there is nowhere to drain it to")
    running = current_drain(agent)
    if running is not None:
        raise ConflictError(
            f"{agent.name} is being drained already by task {running}: follow it with"
            f" 'corral task show {running}' or cancel it with 'corral node undrain {agent.name}'"
        )
    set_draining(agent.db, True)
    agent.note_own_facts()
    task = agent.runner.submit(KIND, {"options": opts.model_dump(mode="json")}, owner)
    return task.to_json()


def end(agent: NodeAgent) -> dict[str, Any]:
    """End maintenance: cancel the drain in progress, if any (its migrations in flight
    finish or roll back), and take VMs again."""
    running = current_drain(agent)
    if running is not None:
        try:
            agent.tasks.request_cancel(running)
        except (ConflictError, NotFoundError):
            running = None  # it ended meanwhile
    set_draining(agent.db, False)
    agent.note_own_facts()
    return {"node": agent.name, "draining": False, "cancelled_drain": running}
