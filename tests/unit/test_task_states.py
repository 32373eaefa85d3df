"""The task state machine allows exactly the documented transitions."""

from __future__ import annotations

import itertools

from corral.tasks.states import TaskState, can_transition

ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "interrupted"),
    ("interrupted", "queued"),
    ("interrupted", "failed"),
}


def test_transition_table_is_exactly_the_documented_one() -> None:
    for a, b in itertools.product(TaskState, TaskState):
        assert can_transition(a, b) == ((a.value, b.value) in ALLOWED), (a, b)


def test_finished_states() -> None:
    assert {s for s in TaskState if s.finished} == {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.INTERRUPTED,
    }
