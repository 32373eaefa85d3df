"""The target's agent as the orchestrator reaches it, in memory: one receive task that
listens at once and ends as its test says (by default: succeeded once the source's
migration completed), and the runtime routes recovery asks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from corral.errors import NotFoundError, WaitTimeout
from corral.hypervisors.base import MigrationState, RunState
from tests.fakes.driver import FakeDriver

T = TypeVar("T")


class FakePeer:
    def __init__(self, calls: list[str], source: FakeDriver) -> None:
        self.calls, self.source = calls, source
        self.task: dict[str, Any] | None = None
        self.ends_as: str | None = None  # "failed", say: the task ends so mid-transfer
        self.runs = RunState.STOPPED
        self.copies = False  # the receive task got disks to copy: it waits for the release
        self.released = False
        self.refuses_handoff = False  # etcd refuses the target's swap: it never runs the VM

    def __enter__(self) -> FakePeer:
        return self

    def __exit__(self, *_: object) -> None: ...

    def _task(self) -> dict[str, Any]:
        assert self.task is not None
        if self.task["state"] == "running":
            if self.ends_as is not None and self.source.migration == MigrationState.ACTIVE:
                self.task.update(state=self.ends_as, error="its QEMU died")
            elif self.source.migration == MigrationState.COMPLETED and self.refuses_handoff:
                self.task.update(state="failed", error="etcd refused the handoff")
            elif self.source.migration == MigrationState.COMPLETED and (
                self.released or not self.copies
            ):
                self.task["state"], self.runs = "succeeded", RunState.RUNNING
        return self.task

    def follow_task(self, task_id: str, until: Callable[[dict[str, Any]], T | None], **_: Any) -> T:
        """The task's stream: its record as it is each time it is looked at."""
        for _look in range(1000):
            found = until(self._task())
            if found is not None:
                return found
        raise WaitTimeout(f"task {task_id} never gave what was awaited")

    def get(self, path: str, **_: Any) -> Any:
        if path.startswith("/tasks/"):
            return self._task()
        if path.startswith("/runtime/"):
            return {"observed": self.runs.value, "recorded": self.runs == RunState.RUNNING}
        raise NotFoundError(f"no {path} on the target")

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        self.calls.append(f"target: POST {path}")
        if path == "/tasks":
            listening = {"phase": "listening", "address": "127.0.0.1", "port": 4444}
            self.copies = bool(body["args"]["disks"])
            if self.copies:
                listening["nbd_port"] = 4445
            self.task = {"id": "t1", "state": "running", "error": None, "progress": listening}
            return self.task
        if path.endswith("/release"):
            self.released = True
        if path.endswith("/cancel") and self.task and self.task["state"] == "running":
            self.task.update(state="cancelled", error="cancelled")
        if path.endswith("/discard"):
            self.runs = RunState.STOPPED
        self.copies = False  # the receive task got disks to copy: it waits for the release
        self.released = False
        return {}
