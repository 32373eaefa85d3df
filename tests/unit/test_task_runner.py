"""The runner runs tasks up to K at once, honours `after`, cancels, records failures, and
recovers tasks a dead agent left running."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.database import Database
from corral.errors import HypervisorError, UserInputError
from corral.tasks.runner import TaskContext, TaskKind, TaskRunner, TaskSuspended
from corral.tasks.states import TaskState
from corral.tasks.store import Task, TaskStore
from corral.waiting import wait_for


class Gate:
    """A task kind that blocks until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            while not self.release.wait(0.01):
                ctx.check_cancelled()
            ctx.log("released")
            return {"n": ctx.args.get("n")}
        finally:
            with self.lock:
                self.running -= 1


def fail(_: TaskContext) -> None:
    raise HypervisorError("QEMU refused")


def crash(_: TaskContext) -> None:
    raise ZeroDivisionError("bug")


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(Database(tmp_path / "db.sqlite"), tmp_path / "logs")


@pytest.fixture
def gate() -> Gate:
    return Gate()


def _no_negative(args: dict[str, Any]) -> None:
    if args.get("n", 0) < 0:
        raise UserInputError("args.n", "must not be negative")


@pytest.fixture
def runner(store: TaskStore, gate: Gate) -> Iterator[TaskRunner]:
    kinds = {
        "gate": TaskKind("gate", gate.run, idempotent=True, validate=_no_negative),
        "fail": TaskKind("fail", fail, idempotent=False),
        "crash": TaskKind("crash", crash, idempotent=False),
    }
    r = TaskRunner(store, kinds, max_parallel=2, poll_interval=0.02)
    r.start()
    yield r
    gate.release.set()
    r.stop(grace=5)


def wait_state(store: TaskStore, task_id: str, state: TaskState) -> Task:
    def reached() -> Task | None:
        task = store.get(task_id)
        return task if task.state == state else None

    return wait_for(reached, timeout=10, what=f"task {task_id} to be {state}")


def test_runs_at_most_k_tasks_at_once(runner: TaskRunner, store: TaskStore, gate: Gate) -> None:
    tasks = [runner.submit("gate", {"n": i}, "test") for i in range(3)]
    wait_for(lambda: gate.running == 2, timeout=10, what="two tasks running")
    assert store.get(tasks[2].id).state == TaskState.QUEUED
    gate.release.set()
    for task in tasks:
        assert wait_state(store, task.id, TaskState.SUCCEEDED).result == {"n": task.args["n"]}
    assert gate.peak == 2


def test_after_waits_for_its_dependency(runner: TaskRunner, store: TaskStore, gate: Gate) -> None:
    first = runner.submit("gate", {}, "test")
    second = runner.submit("gate", {}, "test", after=first.id)
    wait_state(store, first.id, TaskState.RUNNING)
    assert store.get(second.id).state == TaskState.QUEUED
    gate.release.set()
    wait_state(store, second.id, TaskState.SUCCEEDED)


def test_a_failed_dependency_fails_the_dependent_task(runner: TaskRunner, store: TaskStore) -> None:
    first = runner.submit("fail", {}, "test")
    second = runner.submit("gate", {}, "test", after=first.id)
    failed = wait_state(store, second.id, TaskState.FAILED)
    assert failed.error == f"task {first.id} it runs after failed"


def test_failures_are_recorded_with_their_reason(runner: TaskRunner, store: TaskStore) -> None:
    assert (
        wait_state(store, runner.submit("fail", {}, "t").id, TaskState.FAILED).error
        == "QEMU refused"
    )
    crashed = wait_state(store, runner.submit("crash", {}, "t").id, TaskState.FAILED)
    assert crashed.error == "ZeroDivisionError: bug"
    assert "Traceback" in crashed.log_path.read_text()


def test_a_failure_keeps_its_errors_type_and_exit_code(
    runner: TaskRunner, store: TaskStore
) -> None:
    failed = wait_state(store, runner.submit("fail", {}, "t").id, TaskState.FAILED)
    assert (failed.error_type, failed.exit_code) == ("HypervisorError", 7)
    assert failed.to_json()["exit_code"] == 7
    crashed = wait_state(store, runner.submit("crash", {}, "t").id, TaskState.FAILED)
    assert (crashed.error_type, crashed.exit_code) == ("ZeroDivisionError", 1)


def test_a_running_task_stops_when_cancelled(
    runner: TaskRunner, store: TaskStore, gate: Gate
) -> None:
    task = runner.submit("gate", {}, "t")
    wait_state(store, task.id, TaskState.RUNNING)
    store.request_cancel(task.id)
    done = wait_state(store, task.id, TaskState.CANCELLED)
    assert done.events[-1].reason == "cancel requested"


def test_unknown_kinds_and_bad_arguments_are_refused_before_queueing(
    runner: TaskRunner,
    store: TaskStore,
) -> None:
    with pytest.raises(UserInputError, match="unknown task kind 'nope'"):
        runner.submit("nope", {}, "t")
    with pytest.raises(UserInputError) as info:
        runner.submit("gate", {"n": -1}, "t")
    assert info.value.field == "args.n"
    assert store.recent() == []


def _left_running(store: TaskStore, kind: str) -> Task:
    """A task as a killed agent leaves it: running, with nobody running it."""
    task = store.create(kind, {}, "t")
    return store.transition(task.id, TaskState.RUNNING)


def test_recovery_reruns_idempotent_kinds(store: TaskStore, gate: Gate) -> None:
    task = _left_running(store, "gate")
    kinds = {"gate": TaskKind("gate", gate.run, idempotent=True)}
    runner = TaskRunner(store, kinds, poll_interval=0.02)
    [recovered] = runner.recover_interrupted()
    assert recovered.state == TaskState.QUEUED
    assert recovered.attempt == 2
    gate.release.set()
    runner.start()
    try:
        done = wait_state(store, task.id, TaskState.SUCCEEDED)
    finally:
        runner.stop()
    assert [e.to_state for e in done.events] == [
        TaskState.QUEUED,
        TaskState.RUNNING,
        TaskState.INTERRUPTED,
        TaskState.QUEUED,
        TaskState.RUNNING,
        TaskState.SUCCEEDED,
    ]


def test_recovery_leaves_other_kinds_interrupted_saying_why(store: TaskStore) -> None:
    task = _left_running(store, "fail")
    runner = TaskRunner(store, {"fail": TaskKind("fail", fail, idempotent=False)})
    [recovered] = runner.recover_interrupted()
    assert recovered.id == task.id
    assert recovered.state == TaskState.INTERRUPTED
    assert recovered.error is not None
    assert "not idempotent" in recovered.error
    assert recovered.finished_at is not None


def test_a_kinds_own_recovery_can_fail_the_task(store: TaskStore) -> None:
    _left_running(store, "fail")
    kind = TaskKind("fail", fail, idempotent=False, recover=lambda t: "VM found on no node")
    [recovered] = TaskRunner(store, {"fail": kind}).recover_interrupted()
    assert recovered.state == TaskState.FAILED
    assert recovered.error == "VM found on no node"


def test_a_coordinator_runs_beside_the_slots_and_an_agent_stop_suspends_it(
    store: TaskStore, gate: Gate
) -> None:
    def coordinate(ctx: TaskContext) -> dict[str, Any]:
        while not ctx.stopping():
            ctx.check_cancelled()
            threading.Event().wait(0.01)
        raise TaskSuspended()

    kinds = {
        "gate": TaskKind("gate", gate.run, idempotent=True),
        "drain": TaskKind("drain", coordinate, idempotent=True, coordinator=True),
    }
    runner = TaskRunner(store, kinds, max_parallel=1, poll_interval=0.02)
    runner.start()
    try:
        drain = runner.submit("drain", {}, "test")
        wait_state(store, drain.id, TaskState.RUNNING)
        child = runner.submit("gate", {}, "test")  # the one slot is still free
        wait_for(lambda: gate.running == 1, timeout=10, what="the gate running beside it")
        assert store.get(child.id).state == TaskState.RUNNING
    finally:
        gate.release.set()
        runner.stop(grace=5)
    left = store.get(drain.id)
    assert left.state == TaskState.RUNNING  # suspended, not cancelled: the next start resumes
    assert not store.cancel_requested(drain.id)
    [again] = TaskRunner(store, kinds).recover_interrupted()
    assert (again.id, again.state) == (drain.id, TaskState.QUEUED)
