"""The agent's side of migrations: building the migration layer's services from this node,
finding which node owns a VM, starting, planning, cancelling and recovering migrations."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from corral.agent.node_agent import NodeAgent
from corral.client import AgentClient
from corral.cluster.peer_client import peer_client
from corral.errors import ConflictError, CorralError, NotFoundError
from corral.migration import policy
from corral.migration.options import MIB, MigrationOptions
from corral.migration.orchestrator import PreflightFailed, check
from corral.migration.preflight import NodeView
from corral.migration.receiver import ReceiverServices
from corral.migration.recovery import recover_migration
from corral.migration.services import MigrationServices, TlsFiles
from corral.tasks.states import TaskState

PROBE_BYTES = 32 * MIB


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
    return NodeView(name, facts, online=online, draining=node.draining)


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
    return lambda: peer_client(agent.pki, node)


def receiver_services(agent: NodeAgent) -> ReceiverServices:
    return ReceiverServices(
        node=agent.name,
        address=agent.settings.address,
        vms=agent.vms,
        tls=tls_files(agent),
    )


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


def start(agent: NodeAgent, opts: MigrationOptions, owner: str) -> dict[str, Any]:
    """Preflight (refusing with every reason), then queue the migration task here."""
    running = [
        t
        for t in agent.tasks.recent({TaskState.QUEUED, TaskState.RUNNING})
        if t.kind == "migration.send" and t.args["options"]["vm"] == opts.vm
    ]
    if running:
        raise ConflictError(f"VM {opts.vm} is already migrating (task {running[0].id})")
    services = migration_services(agent)
    reasons = check(services, opts)
    if reasons:
        raise PreflightFailed(reasons)
    record = agent.journal.begin(opts.vm, agent.name, opts.target)
    task = agent.runner.submit(
        "migration.send",
        {"migration_id": record.id, "options": opts.model_dump(mode="json")},
        owner,
    )
    return {"migration_id": record.id, "source": agent.name, "task": task.to_json()}


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


def plan(agent: NodeAgent, opts: MigrationOptions) -> dict[str, Any]:
    """The preflight's answer and an estimate, moving nothing."""
    services = migration_services(agent)
    reasons = check(services, opts)
    answer: dict[str, Any] = {
        "vm": opts.vm,
        "source": agent.name,
        "target": opts.target,
        "allowed": not reasons,
        "reasons": [r.to_json() for r in reasons],
    }
    try:
        record = agent.vms.local(opts.vm)
    except CorralError:
        return answer
    ram = record.spec.memory_mib * MIB
    limits = opts.limits(ram)
    estimate: dict[str, Any] = {
        "ram_bytes": ram,
        "timeout_s": limits.completion_timeout_s,
        "max_downtime_ms": limits.max_downtime_ms,
        "storage": agent.dirs.describe(),
    }
    with contextlib.suppress(CorralError):
        estimate["dirty_rate_bytes"] = (
            agent.driver.measure_dirty_rate(agent.vms.layout(opts.vm), 1) * MIB
        )
    if not any(r.code in ("target-unknown", "target-offline", "same-node") for r in reasons):
        with contextlib.suppress(CorralError, OSError):
            estimate["link_bytes_per_s"] = round(probe_bandwidth(agent, opts.target))
    link = float(estimate.get("link_bytes_per_s", 0))
    bandwidth = (
        min(x for x in (link, opts.bandwidth_mib * MIB) if x > 0)
        if link or opts.bandwidth_mib
        else 0.0
    )
    estimate["bandwidth_bytes_per_s"] = round(bandwidth)
    if bandwidth and "dirty_rate_bytes" in estimate:
        ok, seconds = policy.converges(
            ram, float(estimate["dirty_rate_bytes"]), bandwidth, limits.max_downtime_ms
        )
        estimate["converges"] = ok
        estimate["expected_s"] = round(seconds, 2) if seconds is not None else None
        estimate["within_timeout"] = (
            ok and seconds is not None and seconds <= limits.completion_timeout_s
        )
    answer["estimate"] = estimate
    return answer


def cancel(agent: NodeAgent, vm: str) -> dict[str, Any]:
    """Ask the running migration of `vm` from this node to stop."""
    for task in agent.tasks.recent({TaskState.QUEUED, TaskState.RUNNING}):
        if task.kind == "migration.send" and task.args["options"]["vm"] == vm:
            return agent.tasks.request_cancel(task.id).to_json()
    raise NotFoundError(f"no migration of {vm} is running from {agent.name}")


def recover(agent: NodeAgent, vm: str) -> dict[str, Any]:
    """Ask both nodes of `vm`'s last migration what runs, and repair the records.

    :raise ConflictError: a migration of `vm` runs here now (cancel it instead)."""
    agent.vms.refuse_if_held(vm)
    latest = agent.journal.latest(vm)
    if latest is None:
        raise NotFoundError(f"{agent.name} never migrated a VM named {vm!r}")
    return recover_migration(migration_services(agent), agent.journal, latest.id, vm, latest.target)
