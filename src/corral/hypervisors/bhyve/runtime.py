"""A bhyve VM's runtime directory: the supervisor and bhyve PIDs, the markers the supervisor
reads, the migration tunnel's status, and starting the detached helpers (supervisor, relay)
so they outlive an agent restart.

Files: supervisor.pid, vm.pid (bhyve), exit.json (how it last ended), vm.json (what runs:
name, memory), departing / suspending (markers), send.json / receive.json (tunnel status),
console.json (the nmdm unit) and console.pid (its logger), console.log, hypervisor.log.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from corral import hostos
from corral.commands import pid_alive
from corral.hypervisors.base import VmLayout


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    """The command line of `pid` ("" if gone): ps(1) on FreeBSD, /proc on Linux."""
    if hostos.on_freebsd():
        argv = [hostos.tool("bin/ps"), "-ww", "-o", "command=", "-p", str(pid)]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def stopped(pid: int) -> bool:
    """True when `pid` is stopped by a signal (SIGSTOP: the VM is paused)."""
    if hostos.on_freebsd():
        argv = [hostos.tool("bin/ps"), "-o", "state=", "-p", str(pid)]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return out.stdout.strip().startswith("T")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


class Runtime:
    def __init__(self, layout: VmLayout) -> None:
        self.layout = layout
        self.dir = layout.runtime_dir

    def path(self, name: str) -> Path:
        return self.dir / name

    def _pid(self, name: str, marker: str) -> int | None:
        """The PID in `name` if it runs and its command line contains `marker`."""
        try:
            pid = int(self.path(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) and marker in cmdline(pid) else None

    def supervisor_pid(self) -> int | None:
        return self._pid("supervisor.pid", str(self.dir))

    def bhyve_pid(self, vm: str) -> int | None:
        return self._pid("vm.pid", vm)

    def relay_pid(self, side: str) -> int | None:
        return self._pid(f"{side}.pid", str(self.path(f"{side}.json")))

    def console_pid(self) -> int | None:
        return self._pid("console.pid", str(self.layout.console_log))

    def vm(self) -> dict[str, Any]:
        return read_json(self.path("vm.json")) or {}

    def taps(self) -> list[str]:
        """The tap devices this VM's NICs run on here (network.tap_device), in NIC order."""
        found = read_json(self.path("taps.json")) or {}
        devices = found.get("devices", [])
        return [str(d) for d in devices] if isinstance(devices, list) else []

    def mark(self, name: str, text: str = "") -> None:
        self.path(name).write_text(text)

    def unmark(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def marked(self, name: str) -> bool:
        return self.path(name).exists()

    def spawn(self, module: str, args: list[str], pid_file: str) -> subprocess.Popen[bytes]:
        """Start `python -m module args` in its own session, logging to hypervisor.log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.path("hypervisor.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        tmp = self.path(f".{pid_file}.tmp")  # a reader never sees a half-written file
        tmp.write_text(f"{proc.pid}\n")
        tmp.rename(self.path(pid_file))
        return proc

    def clean(self) -> None:
        """Remove what a stopped VM leaves (logs stay)."""
        for name in (
            "supervisor.pid",
            "vm.pid",
            "departing",
            "suspending",
            "incoming",
            "send.json",
            "receive.json",
            "send.pid",
            "receive.pid",
            "console.pid",
        ):
            self.unmark(name)
