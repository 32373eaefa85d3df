"""The QEMU host's facts: architecture, CPU, QEMU version, the CPU models and machine types
this QEMU offers here (asked of a throw-away QEMU over QMP, once), and memory.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from corral.hypervisors import host_info
from corral.hypervisors.base import HostFacts
from corral.hypervisors.qemu.cmdline import QEMU_BINARY
from corral.hypervisors.qemu.qmp_session import QmpSession
from corral.waiting import wait_for


@dataclass(frozen=True)
class QemuOffer:
    """What this QEMU binary offers on this host with this accelerator."""

    version: str
    cpu_models: tuple[str, ...]
    machine_types: tuple[str, ...]


def probe_qemu(accel: str, binary: str = QEMU_BINARY) -> QemuOffer:
    """Start QEMU with no machine, ask it over QMP, and stop it (about 0.1 s)."""
    if shutil.which(binary) is None:
        return QemuOffer("", (), ())
    with tempfile.TemporaryDirectory(prefix="corral-probe-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(
            [
                binary,
                "-machine",
                "none",
                "-accel",
                accel,
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
                f"unix:{sock},server=on,wait=off",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: sock.exists() or proc.poll() is not None,
                timeout=20,
                what="the QEMU probe",
                interval=0.01,
            )
            if proc.poll() is not None:
                return QemuOffer("", (), ())
            with QmpSession(sock, "probe") as qmp:
                v = qmp.execute("query-version")["qemu"]
                cpus = qmp.execute("query-cpu-definitions")
                machines = qmp.execute("query-machines")
                qmp.quit()
        finally:
            proc.kill() if proc.poll() is None else None
            proc.wait()
    usable = sorted(c["name"] for c in cpus if not c.get("unavailable-features"))
    return QemuOffer(
        f"{v['major']}.{v['minor']}.{v['micro']}",
        tuple(usable),
        tuple(sorted(m["name"] for m in machines)),
    )


def host_facts(offer: QemuOffer, accelerator: str) -> HostFacts:
    """This host's facts as the QEMU driver sees them."""
    cpu = host_info.cpu_info()
    total, free = host_info.memory_mib()
    return HostFacts(
        arch=host_info.arch(),
        cpu_vendor=cpu.vendor,
        cpu_model=cpu.model,
        cpu_flags=cpu.flags,
        hypervisor="qemu",
        hypervisor_version=offer.version,
        accelerator=accelerator,
        memory_total_mib=total,
        memory_free_mib=free,
        cpu_count=host_info.cpu_count(),
        cpu_models=offer.cpu_models,
        machine_types=offer.machine_types,
    )
