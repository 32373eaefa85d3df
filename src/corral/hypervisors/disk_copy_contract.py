"""The part of the driver contract that copies a VM's local disks during a live migration
(`corral migrate --with-local-disks`), each primitive on its named side, and the values it
speaks in. A hypervisor whose migration cannot copy disks (bhyve) keeps the defaults, which
refuse; preflight asks `migration_features` first, so they are never reached there.

The order the migration layer calls them in (docs/migration.md, "Local disks"):
target `disk_create` for each copied disk, then `migration_listen`, then `disk_export`;
source `disk_mirror` and `disk_copy_status` until ready, then the RAM migration; once it
completed, source `disk_mirror_end` (abandon false) and, only if every mirror ended clean,
the target's `disk_export_stop` before it resumes. A failure before that: source
`disk_mirror_end` (abandon true), the target's images deleted.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import HypervisorError

if TYPE_CHECKING:
    from corral.hypervisors.base import VmLayout


@dataclass(frozen=True)
class DiskUsage:
    """One disk image: the size the guest sees, and what the host stores (what a copy
    sends: blocks never written are not sent)."""

    virtual_bytes: int
    allocated_bytes: int


@dataclass(frozen=True)
class DiskCopyStatus:
    """The mirrors of one VM: bytes copied of the total, and whether every one is ready
    (in step with the source: the RAM migration may start)."""

    done: int
    total: int
    ready: bool
    jobs: int


class DiskCopyDriver:
    """Disk-copy primitives of a migration driver; the defaults say the hypervisor has none."""

    name: str

    def _no_copy(self) -> HypervisorError:
        return HypervisorError(f"{self.name}'s migration has no disk copy")

    def disk_usage(self, path: Path, fmt: str) -> DiskUsage:
        """Source: the image's virtual size and allocated bytes (it may be in use)."""
        st = path.stat()
        return DiskUsage(virtual_bytes=st.st_size, allocated_bytes=st.st_blocks * 512)

    def disk_create(self, path: Path, fmt: str, virtual_bytes: int) -> None:
        """Target: a new, empty image of format `fmt` and exactly `virtual_bytes`."""
        raise self._no_copy()

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
        """Target: serve the incoming VM's disks `disks`, writable, to the source only."""
        raise self._no_copy()

    def disk_export_stop(self, layout: VmLayout) -> None:
        """Target: stop serving them (before the VM resumes here)."""
        raise self._no_copy()

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
        """Source: start copying disks `disks` to the target, every guest write kept in step
        (`bandwidth`: bytes/s for each disk's background copy; 0: no limit)."""
        raise self._no_copy()

    def disk_copy_status(self, layout: VmLayout, disks: list[int]) -> DiskCopyStatus:
        """Source: the copy now. :raise HypervisorError: a mirror failed or vanished."""
        raise self._no_copy()

    def disk_mirror_end(self, layout: VmLayout, disks: list[int], *, abandon: bool) -> None:
        """Source: end the mirrors without switching to the copies (the source's images stay
        as the guest wrote them). After the migration completed (`abandon` false) each must
        end clean: :raise HypervisorError: one failed, so the target's copy is not whole."""
        raise self._no_copy()


def remove_image(path: Path) -> None:
    """Delete a disk image and its VM's directory if that is left empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or gone
        os.rmdir(path.parent)
