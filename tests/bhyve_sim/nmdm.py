"""nmdm(4) for a simulated host: a null-modem pair of ttys, /dev/nmdmNA and /dev/nmdmNB.

On FreeBSD, nmdm(4) "implements on-demand device creation so simply accessing a given
instance in /dev will create it" (the manual's FILES section; sys/dev/nmdm/nmdm.c clones the
pair on a devfs lookup), anything written on one side is input on the other, and the pair is
destroyed when both sides are closed (nmdm.c, nmdm_close). Linux has no such device, so a
pair here is two pseudo-terminals joined by this relay, one process per pair:
`dev/nmdmNA` and `dev/nmdmNB` under the simulated root are symlinks to the two ptys' slave
sides (real ttys: isatty() holds, as bhyve's uart backend demands), and the relay copies
bytes between their master sides.

What it cannot imitate: devfs cloning on any lookup. Only the simulated bhyve creates a pair,
when it opens a side that does not exist yet (`clone`), so a reader that opens side B first
waits for it to appear (corral's console logger retries its open; on FreeBSD the open itself
creates the pair and never fails with ENOENT). The relay ends the pair when both sides have
been closed for CLOSED_GRACE seconds after side A was first opened (a bhyve restart on a
guest reboot closes and reopens A within that time).

Run as `python -I nmdm.py ROOT UNIT`: it prints `ready` once both links exist.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script with -I: find the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CLOSED_GRACE = 2.0
NEVER_OPENED = 30.0  # a pair whose A side nobody opens goes away


def side(root: Path, unit: int, which: str) -> Path:
    return root / "dev" / f"nmdm{unit}{which}"


def clone(root: Path, unit: int) -> None:
    """Create the pair `unit` (what devfs does on FreeBSD at the first lookup)."""
    if side(root, unit, "A").is_symlink():
        return
    proc = subprocess.Popen(
        [sys.executable, "-I", str(Path(__file__).resolve()), str(root), str(unit)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    if line.strip() != b"ready":
        raise OSError(f"nmdm{unit}: the simulated pair did not come up")


def _link(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.rename(path)


def _copy(source: int, destination: int) -> None:
    with contextlib.suppress(OSError):
        data = os.read(source, 4096)
        if data:
            os.write(destination, data)


def relay(root: Path, unit: int) -> None:
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    a, b = side(root, unit, "A"), side(root, unit, "B")
    a.parent.mkdir(parents=True, exist_ok=True)
    _link(b, os.ttyname(slave_b))
    _link(a, os.ttyname(slave_a))
    os.close(slave_a)
    os.close(slave_b)
    print("ready", flush=True)
    sys.stdout.close()
    poller = select.poll()
    for fd in (master_a, master_b):
        poller.register(fd, select.POLLIN)
    started = time.monotonic()
    opened_a = False
    closed_since: float | None = None
    try:
        while True:
            events = dict(poller.poll(200))
            hung = {fd for fd, ev in events.items() if ev & select.POLLHUP}
            if events.get(master_a, 0) & select.POLLIN:
                _copy(master_a, master_b)
            if events.get(master_b, 0) & select.POLLIN:
                _copy(master_b, master_a)
            opened_a = opened_a or master_a not in hung
            now = time.monotonic()
            if hung:
                time.sleep(0.05)  # a hung-up master (no one on that side) polls ready at once
            if not opened_a:
                if now - started > NEVER_OPENED:
                    return
                continue
            if {master_a, master_b} <= hung:
                closed_since = closed_since or now
                if now - closed_since >= CLOSED_GRACE:
                    return
            else:
                closed_since = None
    finally:
        for path in (a, b):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    relay(Path(sys.argv[1]), int(sys.argv[2]))
