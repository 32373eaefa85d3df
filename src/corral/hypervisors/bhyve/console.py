"""A bhyve VM's serial console: an nmdm(4) null-modem pair and the logger that reads it.

bhyve's com1 backend must be a tty (usr.sbin/bhyve/uart_backend.c, uart_tty_backend: it
opens the path O_RDWR|O_NONBLOCK and refuses it unless isatty), so a plain console.log cannot
be handed to it. Each VM gets a pair: bhyve opens `/dev/nmdmNA` (`-l com1,/dev/nmdmNA`) and
the logger here opens `/dev/nmdmNB`, sets it raw, and appends what the guest writes to the
VM's console.log, which `corral vm console` reads. nmdm(4) creates a pair on first access
and destroys it once both sides are closed, so a unit is free when no `nmdmN[AB]` entry is
in /dev (the directory is listed, never looked up: a lookup would create the pair) and no
other VM on this node has it recorded.

The unit is chosen like a tap (network.tap_device): the first free one from a start derived
from the VM's name, recorded in the runtime directory (console.json) and reused at each start,
restore or received migration on this node.

The logger is a detached process (like the supervisor) so an agent restart loses no line;
it ends when the VM's supervisor has ended. Run as
`python -m corral.hypervisors.bhyve.console B_SIDE LOG SUPERVISOR_PID`.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterable
from pathlib import Path

from corral.commands import pid_alive
from corral.errors import HypervisorError
from corral.hypervisors.bhyve.runtime import read_json

UNITS = range(1000, 10000)
_PAIR = re.compile(r"nmdm(\d+)[AB]")
OPEN_WAIT = 30.0  # how long the logger waits for the pair to exist


def units_in(dev: Path) -> set[int]:
    """The nmdm units that exist in `dev` (listed: a lookup would create a pair)."""
    try:
        names = os.listdir(dev)
    except FileNotFoundError:
        return set()
    return {int(m.group(1)) for n in names if (m := _PAIR.fullmatch(n))}


def pick_unit(name: str, taken: Callable[[int], bool]) -> int:
    """The first unit not `taken`, searching from one derived from the VM's name.

    :raise HypervisorError: every unit is taken."""
    count = len(UNITS)
    start = int(hashlib.sha1(name.encode()).hexdigest(), 16) % count
    for i in range(count):
        unit = UNITS[(start + i) % count]
        if not taken(unit):
            return unit
    raise HypervisorError(f"no free nmdm unit in {UNITS[0]}..{UNITS[-1]}")


def recorded_unit(runtime_dir: Path) -> int | None:
    """The unit a VM's runtime directory has recorded (console.json), if any."""
    unit = (read_json(runtime_dir / "console.json") or {}).get("unit")
    return unit if isinstance(unit, int) else None


def recorded_elsewhere(runtime_dirs: Iterable[Path]) -> set[int]:
    """The units other VMs on this node have recorded."""
    return {u for folder in runtime_dirs if (u := recorded_unit(folder)) is not None}


def _open(side: Path, deadline: float) -> int | None:
    while True:
        try:
            fd = os.open(side, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
            continue
        tty.setraw(fd, termios.TCSANOW)  # no echo into the guest; keep what is queued
        return fd


def follow(side: Path, log: Path, alive: Callable[[], bool]) -> None:
    """Append what arrives on `side` to `log` while `alive()`; then what is left."""
    fd = _open(side, time.monotonic() + OPEN_WAIT)
    if fd is None:
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    with log.open("ab", buffering=0) as out:
        ending = False
        while True:
            events = poller.poll(0 if ending else 500)
            data = b""
            if events and events[0][1] & select.POLLIN:
                with contextlib.suppress(BlockingIOError, OSError):
                    data = os.read(fd, 65536)
            if data:
                out.write(data)
                continue
            if ending:
                break
            if events and events[0][1] & (select.POLLHUP | select.POLLERR):
                time.sleep(0.1)  # bhyve closed its side (a guest reboot restarts it)
            ending = not alive()
    os.close(fd)


def main(args: list[str]) -> int:
    side, log, supervisor = Path(args[0]), Path(args[1]), int(args[2])
    follow(side, log, lambda: pid_alive(supervisor))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
