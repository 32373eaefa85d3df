"""Helpers for integration tests that run VMs through real agents in a lab."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from corral.lab import agents
from corral.lab.guest import Counter, parse_counter
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode


def corral(node: LabNode, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a person on `node` runs it (its agent's socket)."""
    return agents.run_cli(node, *args, timeout=timeout)


def corral_ok(node: LabNode, *args: str) -> str:
    out = corral(node, *args)
    assert out.returncode == 0, f"corral {' '.join(args)}: {out.stderr}"
    return out.stdout


def corral_json(node: LabNode, *args: str) -> Any:
    return json.loads(corral_ok(node, *args, "--json"))


def guest_args(
    image: GuestImage,
    ip: str | None = None,
    disk: bool = True,
    dirty_mib: int = 0,
    pattern: bool = False,
    disk_mib: int = 32,
) -> list[str]:
    """`vm create` flags that boot the test guest."""
    args = [
        "--kernel",
        str(image.kernel),
        "--initrd",
        str(image.initrd),
        "--cmdline",
        guest_cmdline(
            ip=ip,
            dirty_mib=dirty_mib,
            disk="vda" if disk else None,
            pattern="vda" if disk and pattern else None,
        ),
    ]
    if disk:
        args += ["--disk", str(disk_mib)]
    return args


def console_lines(node: LabNode, vm: str, lines: int = 100_000) -> list[str]:
    text = corral_ok(node, "vm", "console", vm, "--lines", str(lines))
    return [ln.strip("\r") for ln in text.splitlines()]


def counters(lines: list[str]) -> list[Counter]:
    return [c for c in (parse_counter(ln.split("\x1b")[-1]) for ln in lines) if c]


def last_counter(node: LabNode, vm: str) -> Counter | None:
    found = counters(console_lines(node, vm, 20))
    return found[-1] if found else None
