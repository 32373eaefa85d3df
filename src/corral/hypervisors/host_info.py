"""Reading the host's CPU and memory from /proc: the parts of a node's facts that do not
depend on the hypervisor.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    vendor: str
    model: str
    flags: tuple[str, ...]


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's vendor, model name and flags in /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return CpuInfo(
        vendor=fields.get("vendor_id", "unknown"),
        model=fields.get("model name", "unknown"),
        flags=tuple(sorted(fields.get("flags", "").split())),
    )


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) MiB from /proc/meminfo text."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])
    total = values.get("MemTotal", 0) // 1024
    free = values.get("MemAvailable", values.get("MemFree", 0)) // 1024
    return total, free


def cpu_info() -> CpuInfo:
    return parse_cpuinfo(Path("/proc/cpuinfo").read_text())


def memory_mib() -> tuple[int, int]:
    return parse_meminfo(Path("/proc/meminfo").read_text())


def arch() -> str:
    return platform.machine()


def cpu_count() -> int:
    return os.cpu_count() or 1
