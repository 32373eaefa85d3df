"""Long-lived QMP connections to the status monitors of this node's VMs, shared by every
thread of the process, on one event loop of their own; each connection also counts QEMU's
events (MIGRATION, MIGRATION_PASS, RESUME, STOP, ...), so a thread can wait for the next
one instead of sleeping.

Before it, every status query opened a new connection and a new event loop (a QMP greeting
and capability negotiation each time, ten times a second during a migration), and a
migration's completion was seen only at the next poll.

Only queries go through the hub (query-status, query-migrate, query-dirty-rate): they change
nothing, so a query whose connection broke (QEMU restarted at the same socket, a checkpoint
restore) is simply asked again on a new connection. Commands that change a VM keep their own
connection to the control monitor (qmp_session.py).

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient
from qemu.qmp.protocol import Runstate

from corral.errors import HypervisorError

T = TypeVar("T")
CONNECT_ATTEMPTS = 4


class _Link:
    """One open connection to a status monitor, and the count of events it has seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.client = QMPClient("corral-monitor")
        self.events = 0  # events received on this connection
        self.seen = 0  # the count when the last query was sent
        self.reader: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self.client.runstate == Runstate.RUNNING


class MonitorHub:
    """The status monitors of every VM this process watches, one connection each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events = threading.Condition()
        self._links: dict[Path, _Link] = {}
        self._connecting: dict[Path, threading.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the loop --------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="qmp-monitors", daemon=True).start()
                self._loop = loop
            return self._loop

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g}s") from exc

    # -- connections -----------------------------------------------------------------------

    def _link(self, path: Path, timeout: float) -> _Link:
        """The open connection to `path`, made now if there is none (one at a time per
        monitor: QEMU serves one client per monitor socket)."""
        with self._lock:
            link = self._links.get(path)
            if link is not None and link.open:
                return link
            connecting = self._connecting.setdefault(path, threading.Lock())
        with connecting:
            with self._lock:
                link = self._links.get(path)
            if link is not None and link.open:
                return link
            if link is not None:
                self._drop(path, link)
            fresh = _Link(path)
            self._connect(fresh, timeout)
            with self._lock:
                self._links[path] = fresh
            return fresh

    def _connect(self, link: _Link, timeout: float) -> None:
        """:raise HypervisorError: the monitor does not answer (QEMU is not running)."""
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                self._call(self._open(link), timeout)
                return
            except (ConnectError, OSError, TimeoutError) as exc:
                if attempt == CONNECT_ATTEMPTS or not link.path.exists():
                    raise HypervisorError(f"QMP socket {link.path} does not answer: {exc}") from exc
                # A monitor takes a moment to accept the next client after a disconnect.
                link.client = QMPClient("corral-monitor")
                time.sleep(0.05 * attempt)

    async def _open(self, link: _Link) -> None:
        await link.client.connect(str(link.path))
        link.reader = asyncio.ensure_future(self._count_events(link))

    async def _count_events(self, link: _Link) -> None:
        async for _event in link.client.events:
            with self._events:
                link.events += 1
                self._events.notify_all()

    def _drop(self, path: Path, link: _Link) -> None:
        with self._lock:
            if self._links.get(path) is link:
                del self._links[path]
        with contextlib.suppress(Exception):
            self._call(self._close(link), 5.0)
        with self._events:
            self._events.notify_all()  # a waiter on it stops waiting

    @staticmethod
    async def _close(link: _Link) -> None:
        if link.reader is not None:
            link.reader.cancel()
        with contextlib.suppress(Exception):
            await link.client.disconnect()

    def forget(self, path: Path) -> None:
        """The VM behind `path` stopped: close its connection."""
        with self._lock:
            link = self._links.get(path)
        if link is not None:
            self._drop(path, link)

    # -- queries and events ----------------------------------------------------------------

    def query(
        self, path: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10
    ) -> Any:
        """The answer to a query on the monitor at `path` (asked again once on a new
        connection if the old one had broken).

        :raise HypervisorError: QEMU refused it, or its monitor does not answer.
        """
        for attempt in (1, 2):
            link = self._link(path, timeout)
            with self._events:
                link.seen = link.events
            try:
                return self._call(link.client.execute(command, arguments), timeout)
            except ExecuteError as exc:
                info = exc.error.error
                raise HypervisorError(
                    f"QEMU refused {command}: {info.class_}: {info.desc}"
                ) from exc
            except TimeoutError as exc:  # connected, but QEMU is busy: not a broken link
                raise HypervisorError(f"QMP {command}: {exc}") from exc
            except Exception as exc:  # the connection broke: QEMU stopped or restarted
                self._drop(path, link)
                if attempt == 2 or not path.exists():
                    raise HypervisorError(
                        f"QMP {command} failed: {type(exc).__name__} {exc}"
                    ) from exc
        raise AssertionError("unreachable")

    def wait_event(self, path: Path, timeout: float) -> bool:
        """Wait until QEMU at `path` sent an event after the last query (or its connection
        closed), at most `timeout` seconds; whether one came."""
        with self._lock:
            link = self._links.get(path)
        if link is None:  # nothing watched there yet: an ordinary pause
            time.sleep(timeout)
            return False
        with self._events:
            return self._events.wait_for(lambda: link.events != link.seen or not link.open, timeout)


HUB = MonitorHub()  # one per process: a monitor serves one client at a time
