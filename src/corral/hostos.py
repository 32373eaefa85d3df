"""Which operating system this corral process runs on, for the few things that are read
differently on Linux and FreeBSD: whether a process lives and what it is (procfs on Linux,
ps(1) on FreeBSD), and the mount table (/proc/self/mountinfo, `mount -p`).

On FreeBSD the tools are under `/`. Tests run corral's FreeBSD paths on Linux against a
simulated FreeBSD host (tests/bhyve_sim) by setting CORRAL_FREEBSD_ROOT to its root: corral
then takes the FreeBSD way and runs the tools found there. The agent sets it for itself and
its helpers when its bhyve driver is pointed at such a root (`bhyve_root`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "CORRAL_FREEBSD_ROOT"


def freebsd_root() -> Path | None:
    """The root of the FreeBSD host corral runs on, or None on Linux."""
    simulated = os.environ.get(ENV)
    if simulated:
        return Path(simulated)
    return Path("/") if sys.platform.startswith("freebsd") else None


def on_freebsd() -> bool:
    return freebsd_root() is not None


def tool(relative: str) -> str:
    """A FreeBSD base tool, e.g. `bin/ps`, `sbin/mount` (under / on a real host)."""
    return str((freebsd_root() or Path("/")) / relative)


def assume_freebsd(root: Path) -> None:
    """Take FreeBSD's way from now on, with the tools under `root`, in this process and
    the helpers it starts (a simulated host; on FreeBSD itself nothing changes)."""
    if root != Path("/") or not sys.platform.startswith("freebsd"):
        os.environ[ENV] = str(root)
