"""A synchronous session on a QEMU's QMP socket, for driver code that runs in worker
threads: qemu.qmp's async client on a private event loop. Errors become HypervisorError with
the command and QEMU's error class; the disconnect that follows `quit` is expected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient

from corral.errors import HypervisorError

# qemu.qmp logs the reader task's EOF after `quit` as an error; it is the expected end.
logging.getLogger("qemu.qmp.protocol").setLevel(logging.CRITICAL)
logging.getLogger("qemu.qmp.qmp_client").setLevel(logging.CRITICAL)


class QmpSession:
    """One connection to a VM's QMP socket."""

    def __init__(self, socket_path: Path, name: str = "corral", timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._connected = False

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout or self.timeout))

    def connect(self, attempts: int = 4) -> QmpSession:
        """Connect and negotiate. A QEMU monitor takes one client at a time and needs a
        moment to accept the next after a disconnect, so a refused or cut-short negotiation
        is tried again a few times.

        :raise HypervisorError: the socket does not answer.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._run(self._client.connect(str(self.socket_path)))
                break
            except (ConnectError, OSError, TimeoutError) as exc:
                if attempt == attempts or not self.socket_path.exists():
                    self._loop.close()
                    raise HypervisorError(
                        f"QMP socket {self.socket_path} does not answer: {exc}"
                    ) from exc
                self._client = QMPClient(self._client.name)
                time.sleep(0.05 * attempt)
        self._connected = True
        return self

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one QMP command and return its result.

        :raise HypervisorError: QEMU answered with an error, or the connection broke.
        """
        try:
            return self._run(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            info = exc.error.error
            raise HypervisorError(f"QEMU refused {command}: {info.class_}: {info.desc}") from exc
        except (OSError, EOFError, TimeoutError, asyncio.CancelledError) as exc:
            raise HypervisorError(f"QMP {command} failed: {type(exc).__name__} {exc}") from exc
        except Exception as exc:  # qemu.qmp's own disconnect errors
            raise HypervisorError(f"QMP {command} failed: {type(exc).__name__} {exc}") from exc

    def quit(self) -> None:
        """Ask QEMU to exit; the connection closing is the expected answer."""
        with contextlib.suppress(HypervisorError):
            self.execute("quit")

    def close(self) -> None:
        if self._connected:
            with contextlib.suppress(Exception):
                self._run(self._client.disconnect(), 5)
            self._connected = False
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> QmpSession:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def qmp_call(
    socket_path: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
) -> Any:
    """One command on a fresh connection."""
    with QmpSession(socket_path, timeout=timeout) as session:
        return session.execute(command, arguments)
