"""Task states and the only transitions allowed between them.

::

    queued ──> running ──> succeeded | failed | cancelled
       │          └──────> interrupted ──> queued (re-run: idempotent kinds)
       └──> cancelled                  └─> failed (others, with the reason)

`interrupted` is what a task that was running when its agent died becomes at the next start.
Recovery then re-queues it if its kind is idempotent; otherwise it stays interrupted, a
finished state whose record says why (or its kind's recovery fails it with a reason).
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        """True for states no task leaves."""
        return self in FINISHED


FINISHED = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.INTERRUPTED}
)

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.RUNNING: frozenset(
        {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.INTERRUPTED}
    ),
    TaskState.INTERRUPTED: frozenset({TaskState.QUEUED, TaskState.FAILED}),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


def can_transition(current: TaskState, new: TaskState) -> bool:
    """Whether a task in `current` may move to `new`."""
    return new in TRANSITIONS[current]
