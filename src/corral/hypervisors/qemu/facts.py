"""The QEMU host's facts: architecture, CPU, QEMU version, accelerator and memory.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from corral.hypervisors import host_info
from corral.hypervisors.base import HostFacts
from corral.hypervisors.qemu.cmdline import QEMU_BINARY


def parse_qemu_version(text: str) -> str:
    """ "7.2.22" from `qemu-system-x86_64 --version` output; "" when absent."""
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else ""


@functools.cache
def qemu_version(binary: str = QEMU_BINARY) -> str:
    if shutil.which(binary) is None:
        return ""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return parse_qemu_version(out.stdout)


def host_facts(accelerator: str = "tcg") -> HostFacts:
    """This host's facts as the QEMU driver sees them."""
    cpu = host_info.cpu_info()
    total, free = host_info.memory_mib()
    return HostFacts(
        arch=host_info.arch(),
        cpu_vendor=cpu.vendor,
        cpu_model=cpu.model,
        cpu_flags=cpu.flags,
        hypervisor="qemu",
        hypervisor_version=qemu_version(),
        accelerator=accelerator,
        memory_total_mib=total,
        memory_free_mib=free,
        cpu_count=host_info.cpu_count(),
    )
