"""The source's side of copying local disks (`corral migrate --with-local-disks`): what is
copied and what stays, the copy itself before the RAM migration starts, its end at
switchover, and what the source removes after a success. The orchestrator calls these in
the order docs/migration.md ("Local disks") gives.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.client import AgentClient
from corral.errors import ConflictError, CorralError, WaitTimeout
from corral.hypervisors.base import MigrationDriver, VmLayout
from corral.hypervisors.disk_copy_contract import DiskCopyStatus, DiskUsage, remove_image
from corral.migration.disk_placement import ROLES, local_indexes, shared_roles
from corral.migration.options import MigrationOptions
from corral.migration.receive_args import DiskCopy
from corral.model import VmSpec
from corral.vms.directories import NodeDirectories
from corral.waiting import wait_for

GIB = 1024**3


@dataclass
class DiskCopyPlan:
    """What moves with the VM besides its memory."""

    copies: list[int]  # the local disks copied (indexes into the spec)
    usage: dict[int, DiskUsage]
    shared: set[str]  # the VM directories both nodes share
    identities: dict[str, str | None] = field(default_factory=dict)  # of the shared ones

    @property
    def virtual_bytes(self) -> int:
        return sum(u.virtual_bytes for u in self.usage.values())

    @property
    def data_bytes(self) -> int:
        """What the copy sends as data (blocks never written are not sent)."""
        return sum(u.allocated_bytes for u in self.usage.values())

    def receive_disks(self) -> list[DiskCopy]:
        return [DiskCopy(index=i, virtual_bytes=self.usage[i].virtual_bytes) for i in self.copies]


def plan_copy(
    driver: MigrationDriver,
    spec: VmSpec,
    opts: MigrationOptions,
    source_storage: dict[str, Any],
    target_storage: dict[str, Any],
) -> DiskCopyPlan:
    """The disks to copy (none without --with-local-disks: preflight refused those) and the
    directories the target checks are still the ones preflight saw.

    :raise HypervisorError: a disk's size cannot be read.
    """
    shared = shared_roles(source_storage, target_storage)
    copies = local_indexes(spec, source_storage, target_storage) if opts.with_local_disks else []
    usage = {i: driver.disk_usage(spec.disks[i].path, spec.disks[i].format) for i in copies}
    identities = {r: source_storage.get(r, {}).get("id") for r in ROLES if r in shared}
    return DiskCopyPlan(copies, usage, shared, identities)


@dataclass
class DiskCopyRun:
    """The copy as it runs on the source: started once, ended once."""

    driver: MigrationDriver
    layout: VmLayout
    plan: DiskCopyPlan
    started: bool = False
    seconds: float | None = None
    copied_bytes: int = 0

    def start(
        self, address: str, port: int, tls_dir: Any, hostname: str | None, bandwidth: int
    ) -> None:
        """`bandwidth`: the migration's cap in bytes/s (0: none), shared by the disks."""
        self.started = True
        share = bandwidth // len(self.plan.copies) if bandwidth else 0
        self.driver.disk_mirror(
            self.layout,
            self.plan.copies,
            address,
            port,
            tls_dir=tls_dir,
            hostname=hostname,
            bandwidth=max(share, 1) if bandwidth else 0,
        )

    def until_ready(
        self,
        timeout: float,
        between: Callable[[], None],
        report: Callable[[DiskCopyStatus, float, float | None], None],
        poll: float,
    ) -> None:
        """Watch the mirrors until every one is ready; `between` runs at each look (cancel,
        the target's health), `report(status, rate, eta)` publishes the progress.

        :raise HypervisorError: a mirror failed. :raise WaitTimeout: not ready in time."""
        begun = time.monotonic()
        last, last_done = begun, 0
        rate = 0.0
        while True:
            between()
            status = self.driver.disk_copy_status(self.layout, self.plan.copies)
            now = time.monotonic()
            if now - last >= 0.5:
                rate = (status.done - last_done) / (now - last)
                last, last_done = now, status.done
            elif last_done == 0 and now > begun:
                rate = status.done / (now - begun)
            eta = (status.total - status.done) / rate if rate > 0 else None
            report(status, rate, eta)
            if status.ready:
                self.seconds = now - begun
                self.copied_bytes = status.done
                return
            if now - begun > timeout:
                raise WaitTimeout(
                    f"the disk copy was not in step after {timeout:g}s"
                    f" ({status.done} of {status.total} bytes)"
                )
            self.driver.migration_wait(self.layout, poll)

    def check(self) -> None:
        """:raise HypervisorError: a mirror failed (during the RAM migration)."""
        if self.started:
            self.driver.disk_copy_status(self.layout, self.plan.copies)

    def finish(self) -> None:
        """After the RAM migration completed. :raise HypervisorError: the copy is not whole."""
        self.driver.disk_mirror_end(self.layout, self.plan.copies, abandon=False)
        self.started = False

    def abandon(self) -> None:
        if self.started:
            with contextlib.suppress(CorralError):
                self.driver.disk_mirror_end(self.layout, self.plan.copies, abandon=True)
            self.started = False


def progress_record(
    status: DiskCopyStatus, rate: float, eta: float | None, disks: int
) -> dict[str, Any]:
    """The migration task's progress during the copy (`phase` "disks"): bytes of the
    mirrors' total, the rate, the ETA. Ready: in step, whatever a write in flight adds to
    the jobs' counters."""
    done = status.total if status.ready else status.done
    return {
        "phase": "disks",
        "done": done,
        "total": status.total,
        "unit": "bytes",
        "remaining": status.total - done,
        "mbps": round(rate * 8 / 1e6, 1),
        "eta_s": None if eta is None else round(eta, 1),
        "disks": disks,
        "ready": status.ready,
    }


def release_target(
    client: Callable[[], AgentClient], task_id: str, log: Callable[[str], None]
) -> None:
    """Tell the target its disks hold every write: its receive task `task_id` stops serving
    them and resumes the VM. Not heard within 30 s: the target gives the VM up after its own
    wait, and the outcome is settled by asking both nodes."""
    path = f"/runtime/incoming/{task_id}/release"

    def released() -> bool:
        try:
            with client() as peer:
                peer.post(path)
        except ConflictError:
            return True  # the task ended already: its outcome says how
        except CorralError as exc:
            log(f"the target did not take the release yet: {exc}")
            return False
        return True

    with contextlib.suppress(CorralError):
        wait_for(released, timeout=30, what="the target to take the release", interval=0.5)


def disk_timeout(plan: DiskCopyPlan, per_gib_s: float) -> float:
    return 60 + per_gib_s * plan.virtual_bytes / GIB


def after_success(
    plan: DiskCopyPlan,
    spec: VmSpec,
    layout: VmLayout,
    dirs: NodeDirectories,
    opts: MigrationOptions,
    log: Callable[[str], None],
) -> None:
    """The VM runs on the target: remove what the source no longer needs. Its copied
    images (unless --keep-source-disks), its config when the target has its own, and its
    checkpoints when --drop-checkpoints said so."""
    if plan.copies and not opts.keep_source_disks:
        for index in plan.copies:
            remove_image(spec.disks[index].path)
        log(f"removed the source's copied disk images ({len(plan.copies)})")
    if "config" not in plan.shared:
        dirs.spec_file(spec.name).unlink(missing_ok=True)
    behind = plan.copies or "system" not in plan.shared  # what preflight said stays behind
    if opts.drop_checkpoints and behind and layout.checkpoint_dir.exists():
        shutil.rmtree(layout.checkpoint_dir, ignore_errors=True)
        log("dropped the VM's checkpoints (--drop-checkpoints)")
