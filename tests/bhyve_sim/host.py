"""A simulated FreeBSD host: a directory laid out like the root of one, with the simulated
tools in their real places and the host's sysctl values and features in etc/bhyve-sim.json."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TOOLS = {
    "usr/sbin/bhyve": "tests.bhyve_sim.bhyve",
    "usr/sbin/bhyvectl": "tests.bhyve_sim.bhyvectl",
    "sbin/sysctl": "tests.bhyve_sim.sysctl",
    "sbin/kldstat": "tests.bhyve_sim.kldstat",
    "sbin/kldload": "tests.bhyve_sim.kldload",
    "sbin/ifconfig": "tests.bhyve_sim.ifconfig",
    "sbin/mount": "tests.bhyve_sim.mount",
    "bin/ps": "tests.bhyve_sim.ps",
}
MODULES = ("vmm", "nmdm", "if_bridge", "if_tuntap")  # boot/kernel/NAME.ko
CPU_FEATURES = (
    "  Features=0x178bfbff<FPU,VME,DE,PSE,TSC,MSR,PAE,MCE,CX8,APIC,SEP,MTRR,PGE,MCA,CMOV,PAT>\n"
    "  Features2=0x7ed8320b<SSE3,PCLMULQDQ,MON,SSSE3,FMA,CX16,SSE4.1,SSE4.2,MOVBE,POPCNT>\n"
    "  AMD Features=0x2e500800<SYSCALL,NX,MMX+,FFXSR,Page1GB,RDTSCP,LM>\n"
)


@dataclass(frozen=True)
class SimHost:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "etc" / "bhyve-sim.json"

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_file.read_text())
        return data

    def configure(self, **changes: Any) -> None:
        """Change the host: `sysctl={...}` values, `snapshot`/`migration` support, `kld`."""
        data = self.config()
        for key, value in changes.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        self.config_file.write_text(json.dumps(data, indent=2))

    @property
    def vmm_dir(self) -> Path:
        return self.root / "dev" / "vmm"

    def memory_file(self, vm: str) -> Path:
        return self.root / "var" / "sim" / "mem" / vm

    def control_socket(self, vm: str) -> Path:
        return self.root / "var" / "run" / "bhyve" / "checkpoint" / vm

    @property
    def firmware(self) -> Path:
        return self.root / "usr" / "local" / "share" / "uefi-firmware" / "BHYVE_UEFI.fd"


def install(root: Path, *, model: str = "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz") -> SimHost:
    """Lay out a simulated FreeBSD host under `root` (idempotent) and return it."""
    host = SimHost(root)
    for relative, module in TOOLS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"#!{sys.executable} -I\n"  # isolated: no corral site hooks, PATH-independent
            "import sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            f"from {module} import main\n"
            f"sys.exit(main(sys.argv[1:], {str(root)!r}))\n"
        )
        path.chmod(0o755)
    for folder in (host.vmm_dir, root / "var" / "sim" / "mem", host.control_socket("x").parent):
        folder.mkdir(parents=True, exist_ok=True)
    (root / "boot" / "kernel").mkdir(parents=True, exist_ok=True)
    for module in MODULES:
        (root / "boot" / "kernel" / f"{module}.ko").write_bytes(b"")
    host.firmware.parent.mkdir(parents=True, exist_ok=True)
    host.firmware.write_bytes(b"\0" * 4096)
    dmesg = root / "var" / "run" / "dmesg.boot"
    dmesg.write_text(
        f'CPU: {model} (2394.45-MHz K8-class CPU)\n  Origin="GenuineIntel"\n{CPU_FEATURES}'
    )
    host.config_file.parent.mkdir(parents=True, exist_ok=True)
    if not host.config_file.exists():
        config = {
            "sysctl": {
                "hw.machine": "amd64",
                "hw.machine_arch": "amd64",
                "hw.model": model,
                "hw.physmem": str(8 << 30),
                "hw.pagesize": "4096",
                "hw.ncpu": "2",
                "hw.vmm.maxcpu": "2",  # vmm.c: the host's CPU count unless tuned
                "kern.osrelease": "14.1-RELEASE",
                "vm.stats.vm.v_free_count": str((6 << 30) // 4096),
            },
            "snapshot": True,
            "migration": True,
            "kld": ["vmm"],  # nmdm.ko is not loaded on a fresh FreeBSD
        }
        host.config_file.write_text(json.dumps(config, indent=2))
    return host
