"""The simulated FreeBSD host profile for an agent: its environment puts only the simulated
host's bin and sbin directories on PATH (no Linux tool is within reach by name), points
corral at that host (CORRAL_FREEBSD_ROOT) and loads freebsd_profile/sitecustomize.py, which
refuses and logs every /proc or /sys access and every program outside the simulated root."""

from __future__ import annotations

from pathlib import Path

import corral
from tests.bhyve_sim.host import SimHost

SITE = Path(__file__).resolve().parent / "freebsd_profile"


def agent_env(host: SimHost, calls: Path) -> dict[str, str]:
    """The environment of an agent on `host`; refused Linux calls are written to `calls`."""
    dirs = [host.root / d for d in ("bin", "sbin", "usr/bin", "usr/sbin")]
    calls.touch()
    return {
        "PATH": ":".join(str(d) for d in dirs),
        "PYTHONPATH": str(SITE),
        "CORRAL_FREEBSD_ROOT": str(host.root),
        "CORRAL_LINUX_CALLS": str(calls),
        "CORRAL_SOURCE": str(Path(corral.__file__).resolve().parent) + "/",
    }


def linux_calls(calls: Path) -> list[str]:
    """What corral's own code tried that FreeBSD has not (empty is the goal)."""
    return [line for line in calls.read_text().splitlines() if line.startswith("corral ")]


def library_probes(calls: Path) -> list[str]:
    """What Python or a library tried on its own (and must survive, as on FreeBSD)."""
    return [line for line in calls.read_text().splitlines() if line.startswith("library ")]
