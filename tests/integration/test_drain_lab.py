"""Node maintenance on a 3-node lab with real agents and real QEMU guests: `corral node
drain` live-migrates the running VMs away (never to a node in maintenance), re-homes a
stopped one, leaves a VM that cannot move running with its reasons, refuses migrations to
the drained node, ends with `undrain`; and a drain whose agent restarts resumes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from corral.commands import run
from corral.lab import agents
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.vm_helpers import (
    console_lines,
    corral,
    corral_json,
    corral_ok,
    guest_args,
    last_counter,
)
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cdrn", 3) as plan:
        yield plan


def boot(node: LabNode, image: GuestImage, name: str, *extra: str) -> None:
    corral_ok(node, "vm", "create", name, "--memory", "128", *extra, "--start")
    wait_for(
        lambda: any("BOOTED" in ln for ln in console_lines(node, name)),
        timeout=120,
        what=f"{name} to boot",
    )


def drain(node: LabNode, name: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = corral(node, "node", "drain", name, "--json", *args, timeout=900)
    return out.returncode, json.loads(out.stdout)


def states(record: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {vm: (e["state"], e["target"]) for vm, e in record["progress"]["vms"].items()}


def node_states(node: LabNode) -> dict[str, bool]:
    return {n["name"]: n["draining"] for n in corral_json(node, "node", "list")}


def owner(node: LabNode, vm: str) -> str:
    return str(corral_json(node, "vm", "show", vm)["owner"])


def test_a_drain_moves_rehomes_and_reports_what_stays(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2, node3 = lab.nodes
    # An empty node drains at once, and is a target for nothing after (asked from node1).
    code, empty = drain(node1, "node3")
    assert code == 0, empty
    assert empty["result"]["outcome"] == "drained"
    assert empty["owner"] == "node1"  # node1's CLI asked, through node1's agent
    wait_for(lambda: node_states(node1)["node3"], timeout=30, what="node1 to see node3 drained")
    boot(node1, guest_image, "d1", *guest_args(guest_image))
    boot(node1, guest_image, "d2", *guest_args(guest_image))
    corral_ok(node1, "vm", "create", "d3", "--memory", "64", *guest_args(guest_image))
    local = agents.scratch_dir(node1) / "stuck.qcow2"  # a disk only node1 has
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(local), "16M"])
    boot(
        node1,
        guest_image,
        "stuck",
        "--kernel",
        str(guest_image.kernel),
        "--initrd",
        str(guest_image.initrd),
        "--cmdline",
        guest_cmdline(),
        "--disk-path",
        str(local),
    )
    before = last_counter(node1, "d1")
    assert before is not None

    code, record = drain(node2, "node1")  # asked from node2's CLI
    assert code == 11, record  # partially drained
    assert record["state"] == "failed"
    assert "node1 partially drained: 1 of 4 VM(s) stay on it" in record["error"]
    assert states(record) == {
        "d1": ("moved", "node2"),
        "d2": ("moved", "node2"),
        "d3": ("rehomed", "node2"),
        "stuck": ("stayed", None),
    }
    codes = {r["code"] for r in record["progress"]["vms"]["stuck"]["reasons"]}
    assert "local-disks" in codes
    assert "target-draining" in codes  # node3 is in maintenance: never a target
    assert record["progress"]["bytes"] > 0
    for vm in ("d1", "d2", "d3"):
        assert owner(node3, vm) == "node2"
    assert owner(node3, "stuck") == "node1"
    assert corral_json(node1, "vm", "show", "stuck")["observed"] == "running"
    wait_for(
        lambda: (last_counter(node2, "d1") or before).seq > before.seq,
        timeout=60,
        what="d1's counter to go on on node2",
    )
    assert corral_json(node2, "vm", "show", "d3")["observed"] == "stopped"

    # In maintenance: node1 takes no VM, and the node list says so.
    assert node_states(node2)["node1"] is True
    out = corral(node2, "migrate", "d1", "node1", "--plan", "--json")
    assert out.returncode == 4
    assert "target-draining" in {r["code"] for r in json.loads(out.stdout)["reasons"]}
    text = corral(node2, "node", "list").stdout
    assert "draining" in text  # node1 still owns "stuck"
    assert "drained" in text  # node3 owns nothing

    # undrain: a target again.
    corral_ok(node2, "node", "undrain", "node1")
    assert node_states(node1)["node1"] is False
    out = corral(node2, "migrate", "d1", "node1", "--plan", "--json")
    assert json.loads(out.stdout)["allowed"], out.stdout
    corral_ok(node1, "vm", "kill", "stuck")


def test_a_drain_resumes_after_its_agent_restarts(lab: LabPlan) -> None:
    node1, node2, _ = lab.nodes
    # --bandwidth: each migration takes seconds, so the restart lands in the first one
    # (a fast machine could otherwise finish the drain before the agent stops).
    out = corral(
        node2,
        "node",
        "drain",
        "node2",
        "--parallel",
        "1",
        "--bandwidth",
        "16",
        "--no-wait",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["id"]

    def migrating() -> bool:
        with agents.client(node2) as client:
            running = client.get("/tasks", state="running")
        return any(t["kind"] == "migration.send" for t in running)

    wait_for(migrating, timeout=120, what="the drain's first migration", interval=0.1)
    agents.stop_agent(node2)
    agents.start_agent(lab, node2)

    def finished() -> dict[str, Any] | None:
        with agents.client(node2) as client:
            task: dict[str, Any] = client.get(f"/tasks/{task_id}")
        return task if task["state"] not in ("queued", "running") else None

    task = wait_for(finished, timeout=600, what="the drain to finish after the restart")
    assert task["state"] == "succeeded", task
    assert task["attempt"] == 2  # run again after the restart: it resumed
    assert task["result"]["outcome"] == "drained"
    assert sorted(task["result"]["moved"]) == ["d1", "d2"]
    assert task["result"]["rehomed"] == ["d3"]
    for vm in ("d1", "d2", "d3"):
        assert owner(node1, vm) == "node1"
    assert corral_json(node1, "vm", "show", "d1")["observed"] == "running"
    children = [
        t
        for t in corral_json(node2, "task", "list")
        if t["kind"] == "migration.send" and t["args"].get("parent") == task_id
    ]
    assert len(children) >= 2  # its migrations are its children


def test_undrain_cancels_a_drain_and_starts_nothing_new(lab: LabPlan) -> None:
    node1, node2, node3 = lab.nodes
    for node in (node2, node3):  # both in maintenance since the tests above
        corral_ok(node1, "node", "undrain", node.name)
    out = corral(
        node1,
        "node",
        "drain",
        "node1",
        "--parallel",
        "1",
        "--bandwidth",
        "24",
        "--no-wait",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["id"]

    def first_migration() -> dict[str, Any] | None:
        with agents.client(node1) as client:
            running = client.get("/tasks", state="running")
        sends = [t for t in running if t["kind"] == "migration.send"]
        return sends[0] if sends else None

    child = wait_for(first_migration, timeout=120, what="the drain's first migration")
    answer = corral_json(node1, "node", "undrain", "node1")
    assert answer["cancelled_drain"] == task_id
    assert answer["draining"] is False

    def ended() -> dict[str, Any] | None:
        with agents.client(node1) as client:
            task: dict[str, Any] = client.get(f"/tasks/{task_id}")
        return task if task["state"] not in ("queued", "running") else None

    task = wait_for(ended, timeout=300, what="the drain to end")
    assert task["state"] == "cancelled"
    vms = task["progress"]["vms"]
    moving = child["args"]["options"]["vm"]
    other = ({"d1", "d2"} - {moving}).pop()
    assert vms[moving]["state"] in ("moved", "stayed")  # it finished, or rolled back
    assert vms[other]["state"] == "stayed"  # never started
    assert vms[other]["reasons"][0]["code"] == "cancelled"
    assert owner(node2, other) == "node1"
    assert corral_json(node1, "vm", "show", other)["observed"] == "running"
    sends = [
        t
        for t in corral_json(node1, "task", "list")
        if t["kind"] == "migration.send" and t["args"].get("parent") == task_id
    ]
    assert len(sends) == 1  # nothing new started after the cancel
    wait_for(
        lambda: node_states(node2)["node1"] is False, timeout=30, what="node2 to see node1 back"
    )
