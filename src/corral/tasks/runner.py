"""The task runner: runs queued tasks of known kinds, up to K at once, each in a thread.

A kind says what runs (`run`), whether it may simply run again after its agent died
(`idempotent`) and, if not, how to recover (`recover`). `recover_interrupted()` is called at
agent start, before the runner starts, for every task the store still says is running.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from corral.errors import ConflictError, CorralError, UserInputError
from corral.tasks.states import TaskState
from corral.tasks.store import Task, TaskStore

log = logging.getLogger(__name__)


class TaskCancelled(Exception):
    """Raised inside a handler when its task's cancel was requested."""


class TaskSuspended(Exception):
    """Raised inside a coordinator when its agent stops: the task stays running in the
    store, so the next start marks it interrupted and runs it again (it resumes)."""


class TaskContext:
    """What a running handler sees: its task, its log, its progress and its cancel flag."""

    def __init__(
        self, store: TaskStore, task: Task, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self.store = store
        self.task = task
        self.stopping = stopping  # the agent is stopping (coordinators suspend)

    @property
    def args(self) -> dict[str, Any]:
        return self.task.args

    def log(self, message: str) -> None:
        """Append a timestamped line to the task's log file."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}"
        with self.task.log_path.open("a") as handle:
            handle.write(f"{stamp} {message}\n")

    def progress(self, **fields: Any) -> None:
        """Replace the task's progress record (phase, done, total, unit, message, ...)."""
        self.store.set_progress(self.task.id, fields)

    @property
    def cancel_requested(self) -> bool:
        return self.store.cancel_requested(self.task.id)

    def check_cancelled(self) -> None:
        """:raise TaskCancelled: the task's cancel was requested."""
        if self.cancel_requested:
            raise TaskCancelled()


Recovery = Callable[[Task], str | None]


@dataclass(frozen=True)
class TaskKind:
    """A kind of task the runner knows.

    `recover(task)` is called for an interrupted task of a non-idempotent kind; it repairs
    what it can and returns None to leave the task interrupted, or a reason to fail it.
    `from_peers`: other members may create it here (a protocol's deferred task); other
    kinds come only from this node's CLI or its own routes.
    `coordinator`: it mostly waits on tasks it queues itself (a drain), so it runs beside
    the K slots, not in one; an agent stop does not cancel it but suspends it
    (`TaskSuspended`), and the next start runs it again (it must be idempotent).
    """

    name: str
    run: Callable[[TaskContext], dict[str, Any] | None]
    idempotent: bool
    validate: Callable[[dict[str, Any]], None] = lambda _args: None
    recover: Recovery | None = None
    description: str = ""
    from_peers: bool = False
    coordinator: bool = False


class TaskRunner:
    """Runs the queued tasks of one node."""

    def __init__(
        self,
        store: TaskStore,
        kinds: dict[str, TaskKind],
        *,
        max_parallel: int = 2,
        poll_interval: float = 2.0,  # a safety net: every submit and every end wakes it
    ) -> None:
        self.store = store
        self.kinds = kinds
        self.max_parallel = max_parallel
        self.poll_interval = poll_interval
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="task")
        self._running: dict[str, Future[None]] = {}
        self._coordinators: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def kind(self, name: str) -> TaskKind:
        """:raise UserInputError: unknown kind."""
        if name not in self.kinds:
            raise UserInputError(
                "kind", f"unknown task kind {name!r}; known: " + ", ".join(sorted(self.kinds))
            )
        return self.kinds[name]

    def submit(self, kind: str, args: dict[str, Any], owner: str, after: str | None = None) -> Task:
        """Validate and queue a task, and wake the runner.

        :raise UserInputError: unknown kind or bad arguments.
        """
        self.kind(kind).validate(args)
        task = self.store.create(kind, args, owner, after)
        self._wake.set()
        return task

    def recover_interrupted(self) -> list[Task]:
        """Mark tasks left running by a dead agent interrupted, then recover each by kind."""
        recovered = []
        for task in self.store.recent({TaskState.RUNNING}, limit=10_000):
            self.store.transition(
                task.id, TaskState.INTERRUPTED, "the agent stopped while this task was running"
            )
            kind = self.kinds.get(task.kind)
            if kind is not None and kind.idempotent:
                done = self.store.transition(
                    task.id,
                    TaskState.QUEUED,
                    f"re-run after the interruption: kind {task.kind!r} is idempotent",
                )
            else:
                reason = kind.recover(task) if kind is not None and kind.recover else None
                if reason is not None:
                    done = self.store.transition(task.id, TaskState.FAILED, error=reason)
                else:
                    why = (
                        "the agent stopped while this task was running; kind "
                        f"{task.kind!r} is not idempotent, so it was not run again"
                    )
                    done = self.store.record_error(task.id, why)
            recovered.append(done)
        return recovered

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="task-runner", daemon=True)
        self._thread.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop dispatching, ask running tasks to cancel and wait up to `grace` seconds.
        Tasks still running then are left for the next start to mark interrupted."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            running = list(self._running)
            coordinators = list(self._coordinators.values())
        for task_id in running:
            with contextlib.suppress(CorralError):
                self.store.request_cancel(task_id)
        deadline = time.monotonic() + grace
        for thread in coordinators:  # they suspend on their own (they see `stopping`)
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for task_id in running:
            future = self._running.get(task_id)
            if future is not None:
                with contextlib.suppress(Exception):
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._dispatch()
            except Exception:  # a broken dispatch must not kill the runner
                log.exception("task dispatch failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _dispatch(self) -> None:
        with self._lock:
            free = self.max_parallel - len(self._running)
        for task in self.store.queued():
            if self._stopping.is_set():
                return
            if task.after is not None and not self._dependency_ready(task):
                continue
            if task.kind not in self.kinds:
                self.store.transition(
                    task.id, TaskState.FAILED, error=f"this agent knows no task kind {task.kind!r}"
                )
                continue
            coordinator = self.kinds[task.kind].coordinator
            if free <= 0 and not coordinator:
                continue
            try:
                started = self.store.transition(
                    task.id, TaskState.RUNNING, "started", expect=TaskState.QUEUED
                )
            except ConflictError:
                continue  # cancelled meanwhile
            if coordinator:
                thread = threading.Thread(
                    target=self._execute, args=(started,), name=f"task-{task.id}", daemon=True
                )
                with self._lock:
                    self._coordinators[task.id] = thread
                thread.start()
                continue
            with self._lock:
                self._running[task.id] = self._pool.submit(self._execute, started)
            free -= 1

    def _dependency_ready(self, task: Task) -> bool:
        assert task.after is not None
        dependency = self.store.get(task.after)
        if not dependency.state.finished:
            return False
        if dependency.state != TaskState.SUCCEEDED:
            self.store.transition(
                task.id,
                TaskState.FAILED,
                error=f"task {task.after} it runs after {dependency.state}",
            )
            return False
        return True

    def _execute(self, task: Task) -> None:
        ctx = TaskContext(self.store, task, self._stopping.is_set)
        kind = self.kinds[task.kind]
        try:
            ctx.log(f"started {task.kind} (attempt {task.attempt})")
            result = kind.run(ctx)
            ctx.log("succeeded")
            self.store.transition(task.id, TaskState.SUCCEEDED, "finished", result=result or {})
        except TaskSuspended:
            ctx.log("suspended: the agent is stopping; its next start resumes this task")
        except TaskCancelled:
            ctx.log("cancelled")
            self.store.transition(task.id, TaskState.CANCELLED, "cancel requested")
        except CorralError as exc:
            ctx.log(f"failed: {exc.message}")
            self.store.transition(
                task.id,
                TaskState.FAILED,
                error=exc.message,
                failure=(type(exc).__name__, exc.exit_code),
            )
        except Exception as exc:
            ctx.log("failed with an unexpected error:\n" + traceback.format_exc())
            self.store.transition(
                task.id,
                TaskState.FAILED,
                error=f"{type(exc).__name__}: {exc}",
                failure=(type(exc).__name__, CorralError.exit_code),
            )
        finally:
            with self._lock:
                self._running.pop(task.id, None)
                self._coordinators.pop(task.id, None)
            self._wake.set()
