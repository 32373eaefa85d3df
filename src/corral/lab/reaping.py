"""Zombies on machines whose PID 1 does not reap orphans (these lab machines): a process
that starts lab agents becomes a child subreaper, so QEMU processes orphaned by a killed
agent are re-parented to it, and `reap_zombie_children` collects them at teardown."""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_PREFIXES = ("qemu", "gluster", "bhyve")  # daemons and VMs whose parents may die first


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def reap_zombie_children() -> list[int]:
    """Collect the QEMU processes re-parented to this one that exited unwaited for."""
    me = str(os.getpid())
    reaped = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rsplit(")", 1)[1].split()
        # Only orphaned QEMUs: other children may be Popen objects that want their status.
        if fields[0] == "Z" and fields[1] == me and comm.startswith(ORPHAN_PREFIXES):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(proc.name), os.WNOHANG)
                reaped.append(int(proc.name))
    return reaped
