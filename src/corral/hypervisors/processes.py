"""Helpers for the hypervisor processes of every driver: the tail of a process log for an
error message, and stopping a process by signal with a SIGKILL fallback.

Must never import: agent, cli, migration, cluster, tasks, storage, lab, or a driver.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from corral.commands import pid_alive
from corral.file_tail import read_tail
from corral.waiting import WaitTimeout, wait_for


def log_tail(path: Path, size: int = 600) -> str:
    """The last `size` characters of a process log ("" when there is none)."""
    return read_tail(path, size * 4).decode(errors="replace")[-size:].strip()


def terminate(pid: int, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send `sig`, then SIGKILL after `timeout`; returns once the process is gone, True if
    it went on the first signal."""
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return signum == sig
        try:
            # A QEMU exits within tens of milliseconds of SIGTERM: look often (a /proc read),
            # the stop is on the migration's critical path.
            wait_for(
                lambda: not pid_alive(pid),
                timeout=wait,
                what=f"process {pid} to exit",
                interval=0.005,
            )
            return signum == sig
        except WaitTimeout:
            continue
    return False
