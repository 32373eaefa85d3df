"""The QEMU driver's disk-copy primitives (the contract in hypervisors/disk_copy_contract.py),
over qemu-img and the QMP sequence of disk_copy.py.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import json
from pathlib import Path

from corral import commands
from corral.errors import HypervisorError
from corral.hypervisors.base import VmLayout
from corral.hypervisors.disk_copy_contract import DiskCopyDriver, DiskCopyStatus, DiskUsage
from corral.hypervisors.qemu import disk_copy


class QemuDiskCopy(DiskCopyDriver):
    def disk_usage(self, path: Path, fmt: str) -> DiskUsage:
        # -U: the image is open (locked) by the running VM; only its header is read.
        out = commands.run(
            ["qemu-img", "info", "-U", "--output=json", "-f", fmt, "--", str(path)]
        ).stdout
        try:
            info = json.loads(out)
            return DiskUsage(int(info["virtual-size"]), int(info.get("actual-size", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise HypervisorError(f"qemu-img info {path}: unexpected answer ({exc})") from exc

    def disk_create(self, path: Path, fmt: str, virtual_bytes: int) -> None:
        if path.exists():
            raise HypervisorError(f"{path} exists already; it is not overwritten")
        path.parent.mkdir(parents=True, exist_ok=True)
        commands.run(["qemu-img", "create", "-q", "-f", fmt, "--", str(path), str(virtual_bytes)])

    def disk_export(
        self,
        layout: VmLayout,
        disks: list[int],
        address: str,
        port: int,
        *,
        tls_dir: Path | None,
        peer_name: str | None,
    ) -> None:
        disk_copy.export_disks(layout, disks, address, port, tls_dir=tls_dir, peer_name=peer_name)

    def disk_export_stop(self, layout: VmLayout) -> None:
        disk_copy.stop_export(layout)

    def disk_mirror(
        self,
        layout: VmLayout,
        disks: list[int],
        address: str,
        port: int,
        *,
        tls_dir: Path | None,
        hostname: str | None,
        bandwidth: int = 0,
    ) -> None:
        disk_copy.mirror_disks(
            layout, disks, address, port, tls_dir=tls_dir, hostname=hostname, speed=bandwidth
        )

    def disk_copy_status(self, layout: VmLayout, disks: list[int]) -> DiskCopyStatus:
        return disk_copy.copy_status(layout, disks)

    def disk_mirror_end(self, layout: VmLayout, disks: list[int], *, abandon: bool) -> None:
        disk_copy.end_mirrors(layout, disks, abandon=abandon)
