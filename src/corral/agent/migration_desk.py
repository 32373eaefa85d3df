"""The agent's side of migrations: the migration layer's services and use cases built from
this node (the use cases themselves are migration/operations.py), finding which node owns a
VM, and measuring the link to a member."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from corral.agent.node_agent import NodeAgent
from corral.client import AgentClient
from corral.cluster.peer_client import peer_client
from corral.errors import CorralError, NotFoundError
from corral.migration.estimate import PastMigration
from corral.migration.operations import MigrationDesk
from corral.migration.options import MIB
from corral.migration.preflight import NodeView
from corral.migration.receive_args import ReceiveArgs
from corral.migration.receiver import ReceiverServices, target_spec
from corral.migration.services import MigrationServices, TlsFiles
from corral.model import VmSpec
from corral.tasks.states import TaskState

PROBE_BYTES = 32 * MIB
HISTORY_SCAN = 100  # past migrations to a node looked at for the plan (its VM's first)


def tls_files(agent: NodeAgent) -> TlsFiles | None:
    pki = agent.pki
    return TlsFiles(pki.ca_cert, pki.node_cert, pki.node_key) if pki.member else None


def target_view(agent: NodeAgent, name: str) -> NodeView | None:
    """The member `name` with facts asked of it now (None: not a member)."""
    try:
        node = agent.registry.get(name)
    except NotFoundError:
        return None
    try:
        with agent.peer(name) as client:
            facts = client.get("/facts")
        online = True
    except CorralError:
        facts, online = node.facts, False
    draining = bool(facts.get("draining")) if online else node.draining
    return NodeView(name, facts, online=online, draining=draining)


def migration_services(agent: NodeAgent) -> MigrationServices:
    return MigrationServices(
        node=agent.name,
        vms=agent.vms,
        journal=agent.journal,
        peer=agent.peer,
        target_view=lambda name: target_view(agent, name),
        local_facts=agent.facts,
        tls=tls_files(agent),
        is_member=lambda name: is_member(agent, name),
        is_online=lambda name: is_online(agent, name),
        pin_peer=lambda name: pin_peer(agent, name),
        members=lambda: [n.name for n in agent.registry.list()],
        require_state=agent.require_state,
        may_resume=agent.etcd.may_resume if agent.etcd is not None else lambda _vm: (True, ""),
        handoff_in_etcd=agent.etcd is not None,
    )


def is_online(agent: NodeAgent, name: str) -> bool:
    """Heard from within the offline time (False once removed, too)."""
    try:
        node = agent.registry.get(name)
    except NotFoundError:
        return False
    return node.online(time.time(), agent.settings.offline_after)


def is_member(agent: NodeAgent, name: str) -> bool:
    try:
        agent.registry.get(name)
    except NotFoundError:
        return False
    return True


def pin_peer(agent: NodeAgent, name: str) -> Callable[[], AgentClient]:
    """A factory of clients of `name` at the address it has now."""
    node = agent.registry.get(name)
    # Fresh clients, not the pool's: the pool closes a removed member's connection.
    return lambda: peer_client(agent.pki, node)


def receiver_services(agent: NodeAgent) -> ReceiverServices:
    return ReceiverServices(
        node=agent.name,
        address=agent.settings.address,
        vms=agent.vms,
        tls=tls_files(agent),
        releases=agent.releases,
        claim=agent.etcd.claim_from if agent.etcd is not None else None,
        give_back=agent.etcd.give_back if agent.etcd is not None else None,
    )


def arrived_spec(agent: NodeAgent, spec: VmSpec) -> VmSpec:
    """`spec` as this node runs it: with the disks its last receive task of that VM copied
    in, where they are here (a source's recovery only knows its own paths)."""
    for task in agent.tasks.recent(limit=200):
        if task.kind != "migration.receive" or task.args.get("spec", {}).get("name") != spec.name:
            continue
        try:
            args = ReceiveArgs.model_validate(task.args)
        except ValueError:
            continue
        return target_spec(args, agent.vms) if args.disks else spec
    return spec


def locate_owner(agent: NodeAgent, vm: str) -> str:
    """The node that owns `vm`: this one, or the member that says so.

    :raise NotFoundError: no online member knows it.
    """
    with contextlib.suppress(NotFoundError):
        return agent.vms.record(vm).owner
    if agent.pki.member:
        for node in agent.registry.list():
            if node.name == agent.name:
                continue
            try:
                with agent.peer(node.name) as client:
                    return str(client.get(f"/vms/{vm}")["owner"])
            except CorralError:
                continue
    raise NotFoundError(f"no node of the cluster knows a VM named {vm!r}")


def probe_bandwidth(agent: NodeAgent, target: str) -> float:
    """Bytes per second from `target` to here over the cluster's TLS link (a 32 MiB read)."""
    with agent.peer(target) as client:
        started = time.monotonic()
        response = client.http.get(
            "/v1/probe/stream",
            params={"size": PROBE_BYTES},
            timeout=60,
            extensions=client.extensions,
        )
        size = len(response.content)
    return size / max(time.monotonic() - started, 1e-6)


def migrating(agent: NodeAgent, vm: str) -> str | None:
    """The id of `vm`'s migration task queued or running here, if any."""
    for task in agent.tasks.recent({TaskState.QUEUED, TaskState.RUNNING}):
        if task.kind == "migration.send" and task.args["options"]["vm"] == vm:
            return task.id
    return None


def history(agent: NodeAgent, target: str, tls: bool) -> list[PastMigration]:
    """What the last successful migrations from here to `target` with the same stream
    achieved, newest first (their tasks' summaries)."""
    found = []
    for task in agent.tasks.recent({TaskState.SUCCEEDED}, limit=500):
        summary = task.result or {}
        if task.kind != "migration.send" or summary.get("target") != target:
            continue
        if bool(summary.get("tls")) != tls:
            continue
        past = PastMigration.from_summary(summary)
        if past is not None:
            found.append(past)
        if len(found) >= HISTORY_SCAN:
            break
    return found


def desk(agent: NodeAgent) -> MigrationDesk:
    """This node's migration use cases (migration/operations.py), wired to the node."""
    return MigrationDesk(
        services=migration_services(agent),
        submit=lambda args, owner: agent.runner.submit("migration.send", args, owner).to_json(),
        migrating=lambda vm: migrating(agent, vm),
        task_alive=lambda task_id: not agent.tasks.get(task_id).state.finished,
        cancel_task=lambda task_id: agent.tasks.request_cancel(task_id).to_json(),
        probe_link=lambda target: probe_bandwidth(agent, target),
        history=lambda target, tls: history(agent, target, tls),
    )
