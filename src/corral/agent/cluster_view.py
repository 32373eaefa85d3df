"""The whole cluster in one view (`corral vm list`, `corral vm show VM` from any node): every
online member asked in parallel with a short timeout for the VMs it owns. A member that does
not answer is not hidden: its VMs as last seen here are listed as `unknown`, and a member
never heard from is listed with the VM count of its last heartbeat.

Only the local CLI asks this (one member never speaks through another).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError, NotFoundError
from corral.migration.placement import Candidate, candidate, creation_reasons, rank
from corral.vms.specs import VmRequest

if TYPE_CHECKING:
    from corral.agent.node_agent import NodeAgent
    from corral.cluster.registry import NodeRecord

ASK_TIMEOUT = 2.0  # seconds a member has to answer


@dataclass
class LastSeen:
    """The VMs each member last reported, kept in memory for when it does not answer."""

    vms: dict[str, tuple[float, list[dict[str, Any]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, node: str, vms: list[dict[str, Any]]) -> None:
        with self.lock:
            self.vms[node] = (time.time(), vms)

    def recall(self, node: str) -> tuple[float, list[dict[str, Any]]] | None:
        with self.lock:
            return self.vms.get(node)


@dataclass(frozen=True)
class Answer:
    node: str
    vms: list[dict[str, Any]] | None  # None: it did not answer
    error: str = ""


def _ask(agent: NodeAgent, node: NodeRecord, online: bool) -> Answer:
    if node.name == agent.name:
        return Answer(node.name, agent.vms.describe_all())
    if not online:
        return Answer(node.name, None, "offline (no heartbeat)")
    try:
        with agent.peer(node.name) as client:
            found: list[dict[str, Any]] = client.request("GET", "/vms", timeout=ASK_TIMEOUT)
    except CorralError as exc:
        return Answer(node.name, None, exc.message)
    return Answer(node.name, found)


def _owned(answer: Answer) -> list[dict[str, Any]]:
    """The VMs a member reports that it owns (a record of another's VM is the owner's to
    report), each marked with its node."""
    return [dict(vm, node=answer.node) for vm in answer.vms or [] if vm["owner"] == answer.node]


def cluster_vms(agent: NodeAgent) -> dict[str, Any]:
    """Every VM of the cluster and how each member answered."""
    if not agent.pki.member:
        alone = [dict(vm, node=agent.name) for vm in agent.vms.describe_all()]
        return {"vms": alone, "nodes": [{"name": agent.name, "answered": True}]}
    now = time.time()
    members = agent.registry.list()
    online = {n.name: n.online(now, agent.settings.offline_after) for n in members}
    answers = agent.fan_out(lambda n: _ask(agent, n, online[n.name]), members)
    memory = agent.last_vms
    vms: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for node, answer in zip(members, answers, strict=True):
        if answer.vms is not None:
            owned = _owned(answer)
            memory.remember(node.name, owned)
            vms += owned
            nodes.append({"name": node.name, "answered": True})
            continue
        nodes.append({"name": node.name, "answered": False, "error": answer.error})
        recalled = memory.recall(node.name)
        if recalled is not None:
            seen_at, known = recalled
            vms += [
                dict(vm, observed="unknown", pid=None, as_of=seen_at, unreachable=answer.error)
                for vm in known
            ]
        else:
            count = node.facts.get("vm_count")
            nodes[-1]["vm_count"] = count  # its last heartbeat's count; names never seen
    vms.sort(key=lambda vm: (vm["name"], vm["node"]))
    return {"vms": vms, "nodes": nodes}


def find_vm(agent: NodeAgent, name: str) -> dict[str, Any]:
    """One VM wherever it runs: this node's record of a VM it owns, else the owner's answer.

    :raise NotFoundError: no member that answered owns it.
    """
    try:
        record = agent.vms.record(name)
        if record.owner == agent.name:
            found = agent.vms.describe(record)
            found["events"] = agent.vms.inventory.events(name)
            return found
    except NotFoundError:
        pass
    view = cluster_vms(agent)
    for vm in view["vms"]:
        if vm["name"] == name and vm.get("observed") != "unknown":
            with agent.peer(vm["node"]) as client:
                shown: dict[str, Any] = client.request(
                    "GET", f"/vms/{name}", timeout=ASK_TIMEOUT * 5
                )
                return shown
    silent = [n["name"] for n in view["nodes"] if not n["answered"]]
    also = f" ({', '.join(silent)} did not answer)" if silent else ""
    raise NotFoundError(f"no node of the cluster owns a VM named {name!r}{also}")


def rank_for_creation(agent: NodeAgent, request: VmRequest) -> list[Candidate]:
    """Every member (this one too) judged as the home of `request`, best first."""
    now = time.time()
    bridges = [nic.bridge for nic in request.nics]
    records = agent.registry.list() if agent.pki.member else []
    draining_here = agent.draining
    members = [
        (n.name, n.facts, n.online(now, agent.settings.offline_after), n.draining)
        for n in records
        if n.name != agent.name
    ]
    members.append((agent.name, agent.facts(), True, draining_here))
    judged = []
    for name, facts, online, draining in members:
        reasons = creation_reasons(
            name,
            facts,
            online=online,
            draining=draining,
            memory_mib=request.memory_mib,
            bridges=bridges,
            machine=request.machine,
        )
        judged.append(candidate(name, reasons, facts, request.memory_mib))
    return rank(judged)
