"""QEMU processes: starting one detached from the agent (it must outlive an agent restart),
finding it again from its pid file, and stopping it. A process is ours only if its command
line names our control socket, so a recycled PID is never mistaken for a VM."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from corral.commands import pid_alive
from corral.errors import HypervisorError
from corral.hypervisors import processes
from corral.hypervisors.base import VmLayout
from corral.hypervisors.processes import log_tail
from corral.hypervisors.qemu import tls_relay
from corral.hypervisors.qemu.monitor_hub import HUB
from corral.waiting import WaitTimeout, wait_for

# Children of this process, kept so that their exit is reaped (no zombies while we live).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def reap_children() -> None:
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


def spawn(argv: list[str], layout: VmLayout, timeout: float = 30.0) -> int:
    """Start QEMU in its own session and wait until both QMP sockets exist.

    :raise HypervisorError: QEMU exited during start-up (its log says why) or hung.
    """
    reap_children()
    layout.runtime_dir.mkdir(parents=True, exist_ok=True)
    HUB.forget(layout.status_socket)  # a connection kept to an earlier QEMU there
    for stale in (layout.control_socket, layout.status_socket, layout.pid_file):
        stale.unlink(missing_ok=True)
    with layout.process_log.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with _children_lock:
        _children[proc.pid] = proc
    # Reap it the moment it exits, so no zombie outlives the VM while this process lives.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()

    def ready() -> bool:
        if proc.poll() is not None:
            raise HypervisorError(
                f"QEMU exited with {proc.returncode} while starting: {log_tail(layout.process_log)}"
            )
        return layout.control_socket.exists() and layout.status_socket.exists()

    try:
        wait_for(ready, timeout=timeout, what="QEMU to open its QMP sockets", interval=0.02)
    except WaitTimeout:
        terminate(proc.pid)
        raise
    return proc.pid


def find_pid(layout: VmLayout) -> int | None:
    """The PID of the VM's QEMU if it runs (and is ours), from its pid file."""
    try:
        pid = int(layout.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    marker = str(layout.control_socket).encode()
    return pid if any(marker in arg for arg in cmdline) else None


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone (reaped)."""
    processes.terminate(pid, timeout=timeout)
    reap_children()


def clean_runtime(layout: VmLayout) -> None:
    """Remove sockets and the pid file a stopped QEMU left (logs stay), and close the kept
    connection to its status monitor."""
    HUB.forget(layout.status_socket)
    tls_relay.stop(layout, force=True, forget=True)  # a migration's relay, if one is open
    for path in (layout.control_socket, layout.status_socket, layout.pid_file):
        path.unlink(missing_ok=True)


def resident_ram(pid: int, ram_bytes: int) -> int | None:
    """The resident part of QEMU's guest RAM mapping: the anonymous mapping of exactly the
    guest's RAM size in /proc/PID/smaps (its Rss); None when there is no such mapping."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    want_kib = ram_bytes // 1024
    size_kib: int | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Size":
            size_kib = int(value.split()[0])
        elif key == "Rss" and size_kib == want_kib:
            return int(value.split()[0]) * 1024
    return None
