"""A drain (migration/drain.py, drain_plan.py) against a scripted cluster: where each VM
goes counting the VMs already moving, the cluster-wide and per-node limits, a failed
migration placed again elsewhere, VMs that stay with their reasons, stopped VMs re-homed,
cancel, suspension and resuming from the progress record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.database import Database
from corral.migration.drain import (
    ChildState,
    DrainIncomplete,
    DrainOptions,
    DrainServices,
    OwnedVm,
    run_drain,
)
from corral.migration.drain_plan import DrainLimits, Moving, for_stopped, pick_target
from corral.migration.placement import Candidate
from corral.migration.preflight import PreflightReason
from corral.tasks.runner import TaskCancelled, TaskContext, TaskSuspended
from corral.tasks.states import TaskState
from corral.tasks.store import TaskStore

GIB = 1024


def test_the_vms_already_moving_count_against_a_targets_memory() -> None:
    ranked = [Candidate("a", (), 3 * GIB, 1), Candidate("b", (), 2 * GIB, 1)]
    moving = Moving()
    assert pick_target("vm", ranked, moving, DrainLimits(4, 4), {}).target == "a"
    moving.add("a", 2 * GIB)  # a 2 GiB VM on its way to a: b has more room now
    assert pick_target("vm", ranked, moving, DrainLimits(4, 4), {}).target == "b"
    moving.add("b", 3 * GIB)  # and b is full once its VM arrives
    pick = pick_target("vm", ranked, moving, DrainLimits(4, 4), {})
    assert pick.target == "a"
    refused = {c.node: [r.code for r in c.reasons] for c in pick.ranking}
    assert refused == {"a": [], "b": ["memory"]}


def test_limits_make_a_vm_wait_and_no_allowed_node_makes_it_stay() -> None:
    ranked = [Candidate("a", (), GIB, 0), Candidate("b", (), GIB, 0)]
    moving = Moving()
    moving.add("a", 1)
    assert pick_target("vm", ranked, moving, DrainLimits(2, 1), {}).target == "b"
    moving.add("b", 1)
    busy = pick_target("vm", ranked, moving, DrainLimits(4, 1), {})
    assert (busy.target, busy.wait) == (None, True)  # both at their per-node limit
    capped = Moving(total=2)
    assert pick_target("vm", ranked, capped, DrainLimits(2, 1), {}).wait  # cluster-wide cap
    refused = [Candidate("a", (PreflightReason("arch", "x86_64 vs arm", "a"),), GIB, 0)]
    stay = pick_target("vm", refused, Moving(), DrainLimits(2, 1), {"b": "link down"})
    assert (stay.target, stay.wait) == (None, False)
    assert [r.code for r in stay.reasons] == ["arch"]
    failed = pick_target("vm", ranked[:1], Moving(), DrainLimits(2, 1), {"a": "link down"})
    assert [r.message for r in failed.reasons] == ["the migration of vm to a failed: link down"]


def test_a_stopped_vm_is_judged_without_running_or_memory_and_never_copied() -> None:
    ranked = [
        Candidate(
            "a",
            (
                PreflightReason("vm-not-running", "VM v is stopped", "src"),
                PreflightReason("memory", "a has 10 MiB free", "a"),
                PreflightReason(
                    "local-disks", "disk 0 (/d) is local; add --with-local-disks x", "a"
                ),
            ),
            GIB,
            0,
        ),
        Candidate("b", (PreflightReason("vm-not-running", "VM v is stopped", "src"),), GIB, 0),
    ]
    judged = for_stopped(ranked)
    assert [(c.node, c.allowed) for c in judged] == [("b", True), ("a", False)]
    (reason,) = judged[1].reasons
    assert reason.message == "a stopped VM moves only on shared storage: disk 0 (/d) is local"


@dataclass
class Cluster:
    """Scripted members: each migration takes `steps` polls; migrations to a node in `fail`
    fail (the VM stays here, running); `refuse` holds reasons per (vm, node)."""

    vms: dict[str, str]  # name -> observed state here
    nodes: dict[str, int] = field(default_factory=lambda: {"a": 8 * GIB, "b": 8 * GIB})
    steps: int = 3
    fail: set[str] = field(default_factory=set)
    refuse: dict[tuple[str, str], str] = field(default_factory=dict)
    others_moving: int = 0  # migrations elsewhere in the cluster
    children: dict[str, list[Any]] = field(default_factory=dict)  # id -> [vm, node, polls left]
    flying: list[int] = field(default_factory=list)  # in flight at each start
    rehomed: dict[str, str] = field(default_factory=dict)
    ranked_for: list[str] = field(default_factory=list)
    on_wait: Any = None

    def owned(self) -> list[OwnedVm]:
        return [OwnedVm(n, s, 256) for n, s in self.vms.items()]

    def ranking(self, vm: str, _opts: DrainOptions) -> list[Candidate]:
        flying = sum(1 for c in self.children.values() if c[2] > 0)
        self.ranked_for.append(f"{vm}@{flying}")  # with how many migrations in flight
        return [
            Candidate(
                node,
                tuple(
                    PreflightReason("x", why, node) for why in [self.refuse.get((vm, node))] if why
                ),
                free,
                0,
            )
            for node, free in self.nodes.items()
        ]

    def start(self, vm: str, target: str, _opts: DrainOptions) -> str:
        child = f"t{len(self.children)}"
        self.children[child] = [vm, target, self.steps]
        self.flying.append(sum(1 for c in self.children.values() if c[2] > 0))
        return child

    def child(self, task_id: str) -> ChildState:
        vm, target, left = self.children[task_id]
        if left > 0:
            return ChildState(TaskState.RUNNING, None, None)
        if target in self.fail:
            return ChildState(TaskState.FAILED, None, f"{target} died; rolled back")
        self.vms.pop(vm, None)
        return ChildState(TaskState.SUCCEEDED, {"bytes_sent": 100}, None)

    def moving(self, exclude: set[str]) -> Moving:
        return Moving(total=self.others_moving)

    def wait(self, _seen: dict[str, int], _seconds: float) -> None:
        for child in self.children.values():
            child[2] -= 1
        if self.on_wait is not None:
            self.on_wait()

    def rehome(self, vm: str, target: str) -> None:
        self.rehomed[vm] = target
        self.vms.pop(vm)

    def services(self) -> DrainServices:
        return DrainServices(
            node="src",
            owned=self.owned,
            ranking=self.ranking,
            start=self.start,
            rehome=self.rehome,
            child=self.child,
            moving=self.moving,
            wait=self.wait,
        )


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(Database(tmp_path / "corral.db"), tmp_path / "logs")


def drain(
    store: TaskStore, cluster: Cluster, stopping: bool = False, **options: Any
) -> tuple[TaskContext, dict[str, Any]]:
    task = store.create("node.drain", {"options": options}, "cli@src")
    store.transition(task.id, TaskState.RUNNING)
    ctx = TaskContext(store, store.get(task.id), lambda: stopping)
    return ctx, run_drain(cluster.services(), ctx)


def test_a_drain_moves_every_running_vm_two_at_a_time_one_per_target(store: TaskStore) -> None:
    cluster = Cluster({f"vm{i}": "running" for i in range(6)})
    ctx, result = drain(store, cluster, parallel=2)
    assert result["outcome"] == "drained"
    assert result["moved"] == [f"vm{i}" for i in range(6)]
    assert max(cluster.flying) == 2
    targets = [c[1] for c in cluster.children.values()]
    assert sorted(targets) == ["a"] * 3 + ["b"] * 3  # never two at once into one node
    assert result["bytes"] == 600
    progress = store.get(ctx.task.id).progress
    assert (progress["done"], progress["total"], progress["unit"]) == (6, 6, "VMs")


def test_parallel_one_moves_one_at_a_time_and_others_migrations_count(store: TaskStore) -> None:
    cluster = Cluster({"vm1": "running", "vm2": "running"})
    drain(store, cluster, parallel=1)
    assert max(cluster.flying) == 1
    busy = Cluster({"vm1": "running"}, others_moving=2)
    polls = 0

    def others_finish() -> None:
        nonlocal polls
        polls += 1
        if polls == 3:
            busy.others_moving = 0  # the cluster's two other migrations ended

    busy.on_wait = others_finish
    _, result = drain(store, busy, parallel=2)
    assert result["moved"] == ["vm1"]
    assert polls >= 3  # it waited for the cluster's migrations before starting


def test_a_failed_migration_is_placed_on_another_node_or_stays(store: TaskStore) -> None:
    cluster = Cluster({"vm1": "running", "vm2": "running"}, fail={"a"})
    _, result = drain(store, cluster)
    assert result["targets"] == {"vm1": "b", "vm2": "b"}
    everyone_fails = Cluster({"vm1": "running"}, fail={"a", "b"})
    with pytest.raises(DrainIncomplete) as ended:
        drain(store, everyone_fails)
    assert "src partially drained: 1 of 1 VM(s) stay on it" in ended.value.message
    assert "a died; rolled back" in ended.value.message
    assert "b died; rolled back" in ended.value.message


def test_a_vm_no_node_may_take_stays_and_the_others_still_move(store: TaskStore) -> None:
    cluster = Cluster(
        {"big": "running", "small": "running", "odd": "paused"},
        refuse={("big", "a"): "too big", ("big", "b"): "too big"},
    )
    ctx = None
    with pytest.raises(DrainIncomplete) as ended:
        ctx, _ = drain(store, cluster)
    assert "2 of 3 VM(s) stay" in ended.value.message
    task = store.recent(limit=1)[0]
    vms = task.progress["vms"]
    assert vms["small"]["state"] == "moved"
    assert vms["big"]["state"] == "stayed"
    assert [r["message"] for r in vms["big"]["reasons"]] == ["too big", "too big"]
    assert vms["odd"]["reasons"][0]["code"] == "vm-state"
    assert task.progress["phase"] == "partially drained"
    assert ctx is None


def test_stopped_vms_are_rehomed_where_their_storage_is_shared(store: TaskStore) -> None:
    cluster = Cluster({"off": "stopped", "on": "running"})
    _, result = drain(store, cluster)
    assert result["rehomed"] == ["off"]
    assert result["moved"] == ["on"]
    assert cluster.rehomed == {"off": "a"}


def test_cancel_starts_nothing_new_and_lets_migrations_in_flight_finish(
    store: TaskStore,
) -> None:
    cluster = Cluster({f"vm{i}": "running" for i in range(4)}, steps=2)

    def cancel_once_started() -> None:
        if cluster.children:
            store.request_cancel(store.recent(limit=1)[0].id)

    cluster.on_wait = cancel_once_started
    with pytest.raises(TaskCancelled):
        drain(store, cluster, parallel=2)
    assert len(cluster.children) == 2  # the two in flight, nothing after the cancel
    vms = store.recent(limit=1)[0].progress["vms"]
    assert sorted(n for n, e in vms.items() if e["state"] == "moved") == ["vm0", "vm1"]
    assert {vms[n]["reasons"][0]["code"] for n in ("vm2", "vm3")} == {"cancelled"}


def test_a_stopping_agent_suspends_the_drain_and_the_next_run_resumes(store: TaskStore) -> None:
    cluster = Cluster({"vm1": "running", "vm2": "running", "vm3": "running"}, steps=2)
    task = store.create("node.drain", {"options": {"parallel": 1}}, "cli@src")
    store.transition(task.id, TaskState.RUNNING)
    stop = {"now": False}
    ctx = TaskContext(store, store.get(task.id), lambda: stop["now"])

    def stop_after_the_first() -> None:
        stop["now"] = any(c[2] <= 1 for c in cluster.children.values())  # vm1 in flight

    cluster.on_wait = stop_after_the_first
    with pytest.raises(TaskSuspended):
        run_drain(cluster.services(), ctx)
    first = store.get(task.id).progress["vms"]
    assert [e["state"] for e in first.values()].count("moving") == 1
    # The agent restarted: vm1's migration (in flight then) arrived; the re-run resumes.
    cluster.children["t0"][2] = 0
    cluster.child("t0")  # it arrived while the agent was down
    cluster.on_wait = None
    again = TaskContext(store, store.get(task.id), lambda: False)
    result = run_drain(cluster.services(), again)
    assert result["moved"] == ["vm1", "vm2", "vm3"]
    assert len(cluster.children) == 3  # vm1 was not moved twice


def test_the_next_vm_is_placed_ahead_while_the_slots_are_busy(store: TaskStore) -> None:
    cluster = Cluster({"vm1": "running", "vm2": "running", "vm3": "running"}, steps=3)
    _, result = drain(store, cluster, parallel=1)
    assert result["moved"] == ["vm1", "vm2", "vm3"]
    # vm2 and vm3 were each judged once, while the one before them was migrating; their
    # migrations started on that judgement.
    assert cluster.ranked_for == ["vm1@0", "vm2@1", "vm3@1"]


def test_a_vm_found_mid_move_after_a_restart_is_recovered_then_judged(store: TaskStore) -> None:
    """The agent died while vm1 migrated; QEMU finished the move alone: the source's copy is
    `migrated`. The resumed drain recovers it (both nodes asked) instead of leaving it."""
    cluster = Cluster({"vm1": "migrated", "vm2": "running"})
    recovered: list[str] = []

    def recover(vm: str) -> None:
        recovered.append(vm)
        cluster.vms.pop(vm)  # the target runs it: the source's record goes

    task = store.create("node.drain", {"options": {}}, "cli@src")
    store.transition(task.id, TaskState.RUNNING)
    store.set_progress(
        task.id,
        {
            "vms": {
                "vm1": {
                    "state": "moving",
                    "target": "a",
                    "task": None,
                    "bytes": 0,
                    "memory_mib": 256,
                    "reasons": [],
                }
            }
        },
    )
    services = cluster.services()
    services.recover = recover
    result = run_drain(services, TaskContext(store, store.get(task.id)))
    assert recovered == ["vm1"]
    assert result["moved"] == ["vm1", "vm2"]
