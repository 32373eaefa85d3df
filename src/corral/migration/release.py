"""The word a target waits for before it resumes a VM whose disks were copied: the source
ended its mirrors and every one ended clean, so the target's images hold every write the
guest made. Given by the source through the agent's API (routes_migrations.py), kept in
memory: a target agent that restarts meanwhile gives the VM up (recover_receiver), and the
source, never having seen it run there, resumes its own copy.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CANCEL_LOOK = 0.25  # seconds between looks at the task's cancel flag while waiting


class ReleaseBoard:
    """Receive tasks released by their source, and the waits for that."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._released: set[str] = set()

    def release(self, task_id: str) -> None:
        with self._changed:
            self._released.add(task_id)
            self._changed.notify_all()

    def forget(self, task_id: str) -> None:
        """A receive task that ended: a release that came too late is dropped."""
        with self._changed:
            self._released.discard(task_id)

    def wait(self, task_id: str, timeout: float, cancelled: Callable[[], bool]) -> bool:
        """True once `task_id` is released (forgotten then); False after `timeout` seconds
        or as soon as `cancelled()` says so."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while task_id not in self._released:
                left = deadline - time.monotonic()
                if left <= 0 or cancelled():
                    return False
                self._changed.wait(min(left, CANCEL_LOOK))
            self._released.discard(task_id)
            return True
