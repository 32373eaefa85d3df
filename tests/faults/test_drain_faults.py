"""Faults injected during a drain, on a 3-node lab, with the fault suite's guests (each
writing its disk sequence, dirtying memory and streaming its counter to a client). Whatever
fails, every VM ends running on exactly one node that records it, no write lost, its TCP
stream alive; and the drain ends `drained` with every VM off the drained node."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from corral.lab import agents
from corral.lab.image import GuestImage
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.faults.scenario import Scenario, kill_agent, qemu_pid, report
from tests.integration.vm_helpers import corral, corral_ok
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]
BANDWIDTH = "48"  # MiB/s per migration: slow enough to inject a fault during one


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cdrf", 3) as plan:
        yield plan


@dataclass
class Guest(Scenario):
    """A fault-suite guest that lives on `home` (a node index)."""

    home: int = 0

    @property
    def source(self) -> LabNode:
        return self.lab.nodes[self.home]


class Drain:
    """`corral node drain NODE --json` in the background."""

    def __init__(self, lab: LabPlan, node: LabNode, *args: str) -> None:
        self.lab, self.node = lab, node
        self.out: Any = None
        self.thread = threading.Thread(
            target=lambda: setattr(
                self,
                "out",
                corral(
                    node,
                    "node",
                    "drain",
                    node.name,
                    "--json",
                    "--bandwidth",
                    BANDWIDTH,
                    *args,
                    timeout=900,
                ),
            ),
            daemon=True,
        )
        self.thread.start()

    def record(self, timeout: float = 600) -> dict[str, Any]:
        self.thread.join(timeout)
        assert self.out is not None, "the drain did not end"
        found: dict[str, Any] = json.loads(self.out.stdout)
        return found


@pytest.fixture
def guests(
    request: pytest.FixtureRequest, lab: LabPlan, guest_image: GuestImage
) -> Iterator[list[Guest]]:
    """Two guests on node1, or as the test's `homes` marker says."""
    marker = request.node.get_closest_marker("homes")
    homes = marker.args if marker else (0, 0)
    index = list(request.session.items).index(request.node) % 50
    made = [
        Guest(lab, f"d{index}x{i}", host=150 + 2 * index + i, home=h) for i, h in enumerate(homes)
    ]
    for guest in made:
        guest.boot(guest_image)
    yield made
    for node in lab.nodes:  # a killed agent is back for the cleanup and the next test
        agents.start_agent(lab, node)
        corral(node, "node", "undrain", node.name)
    for guest in made:
        guest.cleanup()


def child_in_transfer(node: LabNode) -> dict[str, Any]:
    """A migration of the drain that is sending memory."""

    def sending() -> dict[str, Any] | None:
        with agents.client(node, timeout=5) as client:
            tasks = client.get("/tasks", state="running")
        for task in tasks:
            if task["kind"] == "migration.send" and task["progress"].get("phase") == "transfer":
                found: dict[str, Any] = task
                return found
        return None

    return wait_for(sending, timeout=120, what="a migration of the drain in transfer", interval=0.1)


def test_a_target_that_dies_mid_drain(lab: LabPlan, guests: list[Guest]) -> None:
    node1 = lab.nodes[0]
    drain = Drain(lab, node1, "--parallel", "1")
    task = child_in_transfer(node1)
    vm, dead = task["args"]["options"]["vm"], task["args"]["options"]["target"]
    victim = next(g for g in guests if g.vm == vm)
    os.kill(qemu_pid(victim, [n.name for n in lab.nodes].index(dead)), signal.SIGKILL)
    kill_agent(victim, [n.name for n in lab.nodes].index(dead))
    record = drain.record()
    assert record["state"] == "succeeded", record
    survivor = ({"node2", "node3"} - {dead}).pop()
    assert set(record["result"]["targets"].values()) == {survivor}  # placed again elsewhere
    agents.start_agent(lab, lab.node(dead))
    for guest in guests:
        outcome = guest.check()
        assert outcome["runs_on"] == [survivor]
        assert outcome["tcp_survived"]
    report("a target's agent and QEMU killed during a drain", victim.check())


def test_kill_9_of_the_draining_agent_mid_drain(lab: LabPlan, guests: list[Guest]) -> None:
    node1 = lab.nodes[0]
    drain = Drain(lab, node1, "--parallel", "1")
    child_in_transfer(node1)
    with agents.client(node1) as client:
        [drain_task] = [
            t for t in client.get("/tasks", state="running") if t["kind"] == "node.drain"
        ]
    kill_agent(guests[0], 0)
    drain.thread.join(60)  # the CLI loses its stream
    agents.start_agent(lab, node1)

    def finished() -> dict[str, Any] | None:
        with agents.client(node1) as client:
            found: dict[str, Any] = client.get(f"/tasks/{drain_task['id']}")
        return found if found["state"] not in ("queued", "running") else None

    task = wait_for(finished, timeout=600, what="the drain to end after the restart", interval=0.5)
    assert task["state"] == "succeeded", task
    assert task["attempt"] == 2  # resumed
    for guest in guests:
        outcome = guest.check()
        assert outcome["runs_on"] != ["node1"]
        assert outcome["tcp_survived"]
    report("the draining node's agent killed (-9) mid-drain", guests[0].check())


@pytest.mark.homes(0, 1)
def test_two_drains_at_once_never_place_on_each_other(lab: LabPlan, guests: list[Guest]) -> None:
    node1, node2, _ = lab.nodes
    first = Drain(lab, node1)

    def draining(name: str) -> bool:
        nodes = json.loads(corral_ok(node2, "node", "list", "--json"))
        return any(n["name"] == name and n["draining"] for n in nodes)

    wait_for(lambda: draining("node1"), timeout=30, what="node2 to see node1 draining")
    second = Drain(lab, node2)
    records = [first.record(), second.record()]
    for record in records:
        assert record["state"] == "succeeded", record
    assert set(records[1]["result"]["targets"].values()) == {"node3"}  # never node1
    for guest in guests:
        outcome = guest.check()
        assert outcome["runs_on"] == ["node3"]
        assert outcome["tcp_survived"]
    report("two drains at once", guests[0].check())
