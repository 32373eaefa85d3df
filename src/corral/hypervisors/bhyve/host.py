"""Where bhyve's tools and files are on a FreeBSD host. Everything hangs off `root` ("/" on a
real host), so the driver can be pointed at a simulated host laid out the same way.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BhyveHost:
    root: Path = Path("/")

    def _at(self, relative: str) -> Path:
        return self.root / relative

    @property
    def bhyve(self) -> str:
        return str(self._at("usr/sbin/bhyve"))

    @property
    def bhyvectl(self) -> str:
        return str(self._at("usr/sbin/bhyvectl"))

    @property
    def sysctl(self) -> str:
        return str(self._at("sbin/sysctl"))

    @property
    def kldstat(self) -> str:
        return str(self._at("sbin/kldstat"))

    @property
    def ifconfig(self) -> str:
        return str(self._at("sbin/ifconfig"))

    @property
    def kldload(self) -> str:
        return str(self._at("sbin/kldload"))

    @property
    def dev(self) -> Path:
        return self._at("dev")

    def nmdm(self, unit: int, side: str) -> Path:
        """One side of a null-modem pair, nmdm(4): bhyve takes A, the console logger B."""
        return self.dev / f"nmdm{unit}{side}"

    @property
    def vmm_dir(self) -> Path:
        """Running VMs appear here (/dev/vmm/NAME)."""
        return self._at("dev/vmm")

    @property
    def firmware(self) -> Path:
        """UEFI firmware from the sysutils/edk2 (bhyve-firmware) package."""
        return self._at("usr/local/share/uefi-firmware/BHYVE_UEFI.fd")

    @property
    def dmesg_boot(self) -> Path:
        """The boot messages, where FreeBSD lists the CPU's features."""
        return self._at("var/run/dmesg.boot")
