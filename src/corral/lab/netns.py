"""Network-namespace primitives for the lab: listing namespaces and the processes in them,
running a program inside one, and opening a TCP connection from inside one.

The connection is made by a short-lived thread that enters the namespace with setns(2):
a socket keeps the namespace it was created in, so the caller's thread never moves.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import threading
from pathlib import Path

from corral import commands
from corral.errors import EnvironmentProblem

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def existing_namespaces() -> set[str]:
    """Names of the network namespaces `ip netns` knows."""
    out = commands.run(["ip", "-j", "netns", "list"]).stdout.strip()
    if not out:
        return set()
    return {str(entry["name"]) for entry in json.loads(out)}


def in_netns(netns: str, argv: list[str]) -> list[str]:
    """`argv` wrapped to run inside `netns` (the PID stays the program's: ip execs it)."""
    return ["ip", "netns", "exec", netns, *argv]


def pings(netns: str, address: str, count: int = 1, timeout_s: int = 2) -> bool:
    """True when `address` answers `count` pings sent from inside `netns`."""
    argv = in_netns(netns, ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout_s), address])
    return commands.run(argv, check=False).returncode == 0


def pids_in(netns: str) -> list[int]:
    """The PIDs of processes whose network namespace is `netns`."""
    proc = commands.run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_pids(pids: list[int], sig: signal.Signals = signal.SIGKILL) -> None:
    """Send `sig` to each PID, ignoring those already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise EnvironmentProblem(f"setns failed: {os.strerror(err)} (root is needed)")


def connect_in(
    netns: str, host: str, port: int, timeout: float = 5.0, source: str | None = None
) -> socket.socket:
    """A TCP connection to `host:port` made from inside `netns` (from its address `source`
    when given).

    :raise EnvironmentProblem: the namespace does not exist or cannot be entered.
    :raise OSError: the connection itself failed.
    """
    path = NETNS_DIR / netns
    if not path.exists():
        raise EnvironmentProblem(f"network namespace {netns} does not exist")
    result: list[socket.socket | BaseException] = []

    def enter_and_connect() -> None:
        try:
            with path.open() as ns_file:
                _setns(ns_file.fileno())
            bind = (source, 0) if source else None
            result.append(
                socket.create_connection((host, port), timeout=timeout, source_address=bind)
            )
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    # The thread ends without returning to the host namespace; it is never reused.
    worker = threading.Thread(target=enter_and_connect, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
