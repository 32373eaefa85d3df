"""The task store keeps tasks, their history, progress, cancel requests and logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.database import Database
from corral.errors import ConflictError, NotFoundError
from corral.tasks.states import TaskState
from corral.tasks.store import TaskStore


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(Database(tmp_path / "db.sqlite"), tmp_path / "logs")


def test_created_task_is_queued_with_a_creation_event(store: TaskStore) -> None:
    task = store.create("sleep", {"seconds": 1}, owner="node1")
    assert task.state == TaskState.QUEUED
    assert task.args == {"seconds": 1}
    assert [(e.from_state, e.to_state) for e in task.events] == [(None, TaskState.QUEUED)]
    assert "node1" in task.events[0].reason
    assert task.log_path.exists()


def test_transitions_are_recorded_and_forbidden_ones_refused(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    store.transition(task.id, TaskState.RUNNING)
    done = store.transition(task.id, TaskState.SUCCEEDED, result={"ok": True})
    assert done.result == {"ok": True}
    assert done.finished_at is not None
    assert [e.to_state for e in done.events] == [
        TaskState.QUEUED,
        TaskState.RUNNING,
        TaskState.SUCCEEDED,
    ]
    with pytest.raises(ConflictError, match="cannot go from succeeded to running"):
        store.transition(task.id, TaskState.RUNNING)


def test_expect_guards_against_a_concurrent_change(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    store.transition(task.id, TaskState.CANCELLED)
    with pytest.raises(ConflictError, match="not queued"):
        store.transition(task.id, TaskState.RUNNING, expect=TaskState.QUEUED)


def test_cancel_of_a_queued_task_is_immediate(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    assert store.request_cancel(task.id).state == TaskState.CANCELLED


def test_cancel_of_a_running_task_is_a_request(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    store.transition(task.id, TaskState.RUNNING)
    after = store.request_cancel(task.id)
    assert after.state == TaskState.RUNNING
    assert after.cancel_requested
    assert store.cancel_requested(task.id)


def test_cancel_of_a_finished_task_is_refused(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    store.transition(task.id, TaskState.CANCELLED)
    with pytest.raises(ConflictError, match="already cancelled"):
        store.request_cancel(task.id)


def test_after_must_name_an_existing_task(store: TaskStore) -> None:
    with pytest.raises(NotFoundError, match="after"):
        store.create("sleep", {}, owner="x", after="0123456789ab")


def test_unknown_task_is_not_found(store: TaskStore) -> None:
    with pytest.raises(NotFoundError):
        store.get("0123456789ab")


def test_log_is_read_from_an_offset(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    task.log_path.write_text("one\ntwo\n")
    text, offset = store.read_log(task.id)
    assert text == "one\ntwo\n"
    task.log_path.write_text("one\ntwo\nthree\n")
    assert store.read_log(task.id, offset) == ("three\n", offset + 6)


def test_progress_is_replaced(store: TaskStore) -> None:
    task = store.create("sleep", {}, owner="x")
    store.set_progress(task.id, {"phase": "a", "done": 1})
    store.set_progress(task.id, {"phase": "b"})
    assert store.get(task.id).progress == {"phase": "b"}


def test_recent_lists_newest_first_and_filters_by_state(store: TaskStore) -> None:
    first = store.create("sleep", {}, owner="x")
    second = store.create("sleep", {}, owner="x")
    store.transition(first.id, TaskState.CANCELLED)
    assert [t.id for t in store.recent()] == [second.id, first.id]
    assert [t.id for t in store.recent({TaskState.CANCELLED})] == [first.id]
