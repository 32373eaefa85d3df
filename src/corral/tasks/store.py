"""The task store: tasks and their event history in the node's SQLite database. Every state
change goes through `transition`, which checks the transition table and records an event in
the same transaction."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.database import Database
from corral.errors import ConflictError, NotFoundError
from corral.file_tail import read_from
from corral.tasks.changes import ChangeFeed
from corral.tasks.states import TaskState, can_transition


@dataclass(frozen=True)
class TaskEvent:
    at: float
    from_state: TaskState | None
    to_state: TaskState
    reason: str


@dataclass(frozen=True)
class Task:
    """One task as stored."""

    id: str
    kind: str
    args: dict[str, Any]
    owner: str
    after: str | None
    state: TaskState
    attempt: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    log_path: Path
    events: tuple[TaskEvent, ...] = field(default=())
    error_type: str | None = None  # the failing error's class (a CorralError's name)
    exit_code: int | None = None  # and the exit code the CLI gives it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "args": self.args,
            "owner": self.owner,
            "after": self.after,
            "state": self.state.value,
            "attempt": self.attempt,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "error_type": self.error_type,
            "exit_code": self.exit_code,
            "cancel_requested": self.cancel_requested,
            "events": [
                {
                    "at": e.at,
                    "from": e.from_state.value if e.from_state else None,
                    "to": e.to_state.value,
                    "reason": e.reason,
                }
                for e in self.events
            ],
        }


def _task(row: sqlite3.Row, events: tuple[TaskEvent, ...] = ()) -> Task:
    return Task(
        id=row["id"],
        kind=row["kind"],
        args=json.loads(row["args"]),
        owner=row["owner"],
        after=row["after"],
        state=TaskState(row["state"]),
        attempt=row["attempt"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=json.loads(row["progress"]),
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        cancel_requested=bool(row["cancel_requested"]),
        log_path=Path(row["log_path"]),
        events=events,
        error_type=row["error_type"],
        exit_code=row["exit_code"],
    )


class TaskStore:
    """Tasks of one node."""

    def __init__(self, db: Database, log_dir: Path) -> None:
        self.db = db
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        # Every change of a task's record bumps its number here (its stream wakes at once).
        self.changes = ChangeFeed()

    def create(self, kind: str, args: dict[str, Any], owner: str, after: str | None = None) -> Task:
        """Queue a new task.

        :raise NotFoundError: `after` names no task of this node.
        """
        task_id = uuid.uuid4().hex[:12]
        now = time.time()
        log_path = self.log_dir / f"{task_id}.log"
        with self.db.transaction() as conn:
            if (
                after is not None
                and conn.execute("SELECT 1 FROM tasks WHERE id = ?", (after,)).fetchone() is None
            ):
                raise NotFoundError(f"after: no task {after!r} on this node")
            conn.execute(
                "INSERT INTO tasks (id, kind, args, owner, after, state, created_at, log_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    kind,
                    json.dumps(args),
                    owner,
                    after,
                    TaskState.QUEUED.value,
                    now,
                    str(log_path),
                ),
            )
            conn.execute(
                "INSERT INTO task_events (task_id, at, from_state, to_state, reason)"
                " VALUES (?, ?, NULL, ?, ?)",
                (task_id, now, TaskState.QUEUED.value, f"created by {owner}"),
            )
        log_path.touch()
        return self.get(task_id)

    def get(self, task_id: str) -> Task:
        """:raise NotFoundError: no such task."""
        rows = self.db.query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise NotFoundError(f"no task {task_id!r} on this node")
        events = tuple(
            TaskEvent(
                e["at"],
                TaskState(e["from_state"]) if e["from_state"] else None,
                TaskState(e["to_state"]),
                e["reason"],
            )
            for e in self.db.query(
                "SELECT * FROM task_events WHERE task_id = ? ORDER BY at, rowid", (task_id,)
            )
        )
        return _task(rows[0], events)

    def recent(self, states: set[TaskState] | None = None, limit: int = 100) -> list[Task]:
        """Newest first."""
        rows = self.db.query("SELECT * FROM tasks ORDER BY created_at DESC LIMIT ?", (limit,))
        tasks = [_task(r) for r in rows]
        return [t for t in tasks if states is None or t.state in states]

    def queued(self) -> list[Task]:
        """Queued tasks, oldest first."""
        rows = self.db.query(
            "SELECT * FROM tasks WHERE state = ? ORDER BY created_at, rowid",
            (TaskState.QUEUED.value,),
        )
        return [_task(r) for r in rows]

    def transition(
        self,
        task_id: str,
        new: TaskState,
        reason: str = "",
        *,
        expect: TaskState | None = None,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        failure: tuple[str, int] | None = None,
    ) -> Task:
        """Move a task to `new`, recording the event, in one transaction; `failure` is the
        failing error's (type name, exit code).

        :raise ConflictError: the transition table forbids it, or the task is no longer in
            `expect` (another actor moved it first).
        """
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT state, attempt FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no task {task_id!r} on this node")
            current = TaskState(row["state"])
            if expect is not None and current != expect:
                raise ConflictError(f"task {task_id} is {current}, not {expect}")
            if not can_transition(current, new):
                raise ConflictError(f"task {task_id} cannot go from {current} to {new}")
            sets = ["state = ?"]
            params: list[object] = [new.value]
            if new == TaskState.RUNNING:
                sets.append("started_at = ?")
                params.append(now)
            if new.finished:
                sets.append("finished_at = ?")
                params.append(now)
            if new == TaskState.QUEUED:  # a re-run after an interruption
                sets += [
                    "attempt = attempt + 1",
                    "finished_at = NULL",
                    "error = NULL",
                    "error_type = NULL",
                    "exit_code = NULL",
                ]
            if error is not None:
                sets.append("error = ?")
                params.append(error)
            if result is not None:
                sets.append("result = ?")
                params.append(json.dumps(result))
            if failure is not None:
                sets += ["error_type = ?", "exit_code = ?"]
                params += list(failure)
            conn.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id = ?", (*params, task_id))
            conn.execute(
                "INSERT INTO task_events (task_id, at, from_state, to_state, reason)"
                " VALUES (?, ?, ?, ?, ?)",
                (task_id, now, current.value, new.value, reason or error or ""),
            )
        self.changes.bump(task_id)
        return self.get(task_id)

    def set_progress(self, task_id: str, progress: dict[str, Any]) -> None:
        """Replace the task's structured progress record."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE tasks SET progress = ? WHERE id = ?", (json.dumps(progress), task_id)
            )
        self.changes.bump(task_id)

    def record_error(self, task_id: str, error: str) -> Task:
        """Say why a finished task ended as it did, without moving it."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE tasks SET error = ? WHERE id = ?", (error, task_id))
        self.changes.bump(task_id)
        return self.get(task_id)

    def request_cancel(self, task_id: str) -> Task:
        """Ask for a task to stop: a queued one is cancelled now, a running one by its handler.

        :raise ConflictError: the task has already finished.
        """
        task = self.get(task_id)
        if task.state.finished:
            raise ConflictError(f"task {task_id} has already {task.state}")
        with self.db.transaction() as conn:
            conn.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
        self.changes.bump(task_id)
        if task.state == TaskState.QUEUED:
            try:
                return self.transition(
                    task_id, TaskState.CANCELLED, "cancelled while queued", expect=TaskState.QUEUED
                )
            except ConflictError:
                pass  # the runner started it meanwhile; its handler sees the request
        return self.get(task_id)

    def cancel_requested(self, task_id: str) -> bool:
        rows = self.db.query("SELECT cancel_requested FROM tasks WHERE id = ?", (task_id,))
        return bool(rows and rows[0][0])

    def read_log(self, task_id: str, offset: int = 0) -> tuple[str, int]:
        """The task's log from byte `offset` (at most CHUNK_LIMIT bytes of it), and the
        offset to continue from."""
        data = read_from(self.get(task_id).log_path, offset)
        return data.decode(errors="replace"), offset + len(data)
