"""Change numbers of tasks, and waiting for the next change without polling: a thread that
changes a task bumps its number; a waiter (a worker thread, or a coroutine of the agent's
event loop streaming the task to a client) wakes at once.

Must never import: agent, cli, migration, hypervisors.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class ChangeFeed:
    """The change number of each task, bumped on every change of its record."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}
        self._async: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self.closed = False

    def version(self, key: str) -> int:
        with self._cond:
            return self._versions.get(key, 0)

    def bump(self, key: str) -> None:
        """`key` changed: wake its waiters."""
        with self._cond:
            self._versions[key] = self._versions.get(key, 0) + 1
            self._cond.notify_all()
            waiters = list(self._async.get(key, ()))
        self._wake(waiters)

    def close(self) -> None:
        """The agent stops: every waiter returns now, and no wait blocks again."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            waiters = [w for ws in self._async.values() for w in ws]
        self._wake(waiters)

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def wait(self, key: str, seen: int, timeout: float) -> int:
        """Block until `key` is past change `seen` (or `timeout`, or close); its number."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self._versions.get(key, 0) != seen, timeout)
            return self._versions.get(key, 0)

    def wait_any(self, seen: dict[str, int], timeout: float) -> None:
        """Block until any key of `seen` is past its change number there (or `timeout`, or
        close)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self.closed or any(self._versions.get(k, 0) != v for k, v in seen.items()),
                timeout,
            )

    async def wait_async(self, key: str, seen: int, timeout: float) -> int:
        """`wait` for a coroutine: it never blocks the event loop."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._cond:
            if self.closed or self._versions.get(key, 0) != seen:
                return self._versions.get(key, 0)
            self._async.setdefault(key, set()).add(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            with self._cond:
                waiting = self._async.get(key)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._async[key]
        return self.version(key)
