"""A hypervisor that exists only in memory, for the orchestrator's fast tests: VMs are
states in a dict, and an outgoing migration reports the states its test scripts. Every
call that changes something is written to `calls`, shared with the fake peer, so a test
can check the order of a rollback across both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.errors import HypervisorError
from corral.hypervisors.base import (
    CheckpointInfo,
    HostFacts,
    MigrationDriver,
    MigrationState,
    MigrationStatus,
    MigrationTuning,
    RunState,
    RuntimeStatus,
    VmLayout,
)
from corral.hypervisors.disk_copy_contract import DiskCopyStatus, DiskUsage
from corral.model import VmSpec


class FakeDriver(MigrationDriver):
    name = "fake"

    def __init__(self, calls: list[str], script: list[MigrationState]) -> None:
        self.calls, self.script = calls, list(script)
        self.vms: dict[Path, RunState] = {}
        self.migration = MigrationState.NONE
        self.elapsed_ms = 0
        self.looks = 0

    def _did(self, what: str, layout: VmLayout, state: RunState | None = None) -> None:
        self.calls.append(f"source: {what}")
        if state is not None:
            self.vms[layout.runtime_dir] = state

    def facts(self) -> HostFacts:
        raise NotImplementedError

    def define(self, spec: VmSpec) -> None: ...
    def undefine(self, spec: VmSpec, layout: VmLayout, **_: Any) -> None:
        self._did("undefine", layout)

    def start(self, spec: VmSpec, layout: VmLayout, *, paused: bool = False) -> RuntimeStatus:
        self._did("start", layout, RunState.PAUSED if paused else RunState.RUNNING)
        return self.status(layout)

    def shutdown(self, layout: VmLayout, timeout: float) -> bool:
        self._did("shutdown", layout, RunState.STOPPED)
        return True

    def kill(self, layout: VmLayout) -> None:
        self._did("kill", layout, RunState.STOPPED)

    def pause(self, layout: VmLayout) -> None:
        self._did("pause", layout, RunState.PAUSED)

    def resume(self, layout: VmLayout) -> None:
        self._did("resume", layout, RunState.RUNNING)

    def status(self, layout: VmLayout) -> RuntimeStatus:
        return RuntimeStatus(self.vms.get(layout.runtime_dir, RunState.STOPPED))

    def checkpoint(self, *_: Any, **__: Any) -> CheckpointInfo:
        raise NotImplementedError

    def restore(self, *_: Any) -> RuntimeStatus:
        raise NotImplementedError

    def delete_checkpoint(self, *_: Any) -> None: ...
    def list_checkpoints(self, layout: VmLayout) -> list[CheckpointInfo]:
        return []

    def compatible(self, *_: Any) -> list[tuple[str, str]]:
        return []

    def migration_tls_dir(self, layout: VmLayout, *_: Any) -> Path:
        return layout.runtime_dir / "tls"

    def migration_listen(self, *_: Any) -> None: ...
    def migration_incoming_done(self, layout: VmLayout, *, resume: bool = True) -> bool:
        return True

    def migration_start(self, layout: VmLayout, address: str, port: int, t: Any) -> None:
        self._did(f"migrate to {address}:{port}", layout)

    def migration_status(self, layout: VmLayout) -> MigrationStatus:
        if self.script and not self.migration.finished:
            self.migration = self.script.pop(0)
            self.elapsed_ms += 1000
            if self.migration == MigrationState.COMPLETED:
                self.vms[layout.runtime_dir] = RunState.MIGRATED
        return MigrationStatus(self.migration, elapsed_ms=self.elapsed_ms, ram_total=64 << 20)

    def migration_tune(self, layout: VmLayout, **_: Any) -> None: ...
    def migration_postcopy(self, layout: VmLayout) -> None:
        self._did("post-copy", layout)

    def migration_force(self, layout: VmLayout) -> None:
        self._did("force", layout, RunState.PAUSED)

    def migration_cancel(self, layout: VmLayout) -> None:
        self._did("cancel the migration", layout)
        if not self.migration.finished:
            self.migration = MigrationState.CANCELLED

    def migration_resume_source(self, layout: VmLayout) -> None:
        self._did("resume", layout, RunState.RUNNING)

    def measure_dirty_rate(self, layout: VmLayout, seconds: int) -> int:
        return 0

    # -- disk copy: a 64 MiB disk with 8 MiB of data, in step after `copy_looks` looks ------

    copy_looks = 3
    copy_fails_at: int | None = None  # the look at which a mirror fails
    mirror_broken = False  # the mirror ends with an error at switchover

    def disk_usage(self, path: Path, fmt: str) -> DiskUsage:
        return DiskUsage(64 << 20, 8 << 20)

    def disk_mirror(self, layout: VmLayout, disks: list[int], *_: Any, **__: Any) -> None:
        self._did(f"mirror disks {disks}", layout)
        self.looks = 0

    def disk_copy_status(self, layout: VmLayout, disks: list[int]) -> DiskCopyStatus:
        self.looks += 1
        if self.copy_fails_at is not None and self.looks >= self.copy_fails_at:
            raise HypervisorError("the copy of disk 0 failed: No space left on device")
        done = min(self.looks, self.copy_looks) * (64 << 20) // self.copy_looks
        return DiskCopyStatus(done, 64 << 20, done == 64 << 20, len(disks))

    def disk_mirror_end(self, layout: VmLayout, disks: list[int], *, abandon: bool) -> None:
        self._did(f"end mirrors (abandon={abandon})", layout)
        if self.mirror_broken and not abandon:
            raise HypervisorError("the disk copy is not whole: disk 0: its mirror had stopped")


_ = MigrationTuning  # the contract's type, named for readers of migration_start
