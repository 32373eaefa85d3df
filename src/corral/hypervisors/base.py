"""The driver contract every hypervisor implements (see docs/architecture.md), and the value
types it speaks in. A driver is stateless: each call gets the VM's spec and where its files
are (`VmLayout`), so an agent restarted at any time finds its VMs again.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from corral.hypervisors.disk_copy_contract import DiskCopyDriver
from corral.model import VmSpec


@dataclass(frozen=True)
class HostFacts:
    """What a node's hypervisor host is: compared by migration preflight across nodes."""

    arch: str
    cpu_vendor: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    hypervisor: str
    hypervisor_version: str
    accelerator: str
    memory_total_mib: int
    memory_free_mib: int
    cpu_count: int
    cpu_models: tuple[str, ...] = ()
    machine_types: tuple[str, ...] = ()
    bridges: tuple[str, ...] = ()  # the host's bridges a NIC can join, found the host's way
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("cpu_flags", "cpu_models", "machine_types"):
            data[key] = list(data[key])
        data["bridges"] = sorted(self.bridges)
        return data


class RunState(StrEnum):
    """What a VM's hypervisor process is doing, as observed (never as remembered)."""

    STOPPED = "stopped"  # no process
    STARTING = "starting"  # process up, control socket not yet answering
    RUNNING = "running"
    PAUSED = "paused"
    INCOMING = "incoming"  # waiting for a migration stream or a checkpoint
    MIGRATED = "migrated"  # sent its state away; its copy now runs elsewhere
    SHUTTING_DOWN = "shutting-down"
    ERROR = "error"  # the hypervisor reports an internal error or a crash


@dataclass(frozen=True)
class RuntimeStatus:
    state: RunState
    pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class VmLayout:
    """Where one VM's files are on this node, chosen by the caller.

    `runtime_dir` is node-local (control socket, pid file, console log); `checkpoint_dir`
    may be on shared storage.
    """

    runtime_dir: Path
    checkpoint_dir: Path

    @property
    def control_socket(self) -> Path:
        """For operations (one client at a time: a migration holds it)."""
        return self.runtime_dir / "qmp.sock"

    @property
    def status_socket(self) -> Path:
        """A second monitor for status queries, free while the first is busy."""
        return self.runtime_dir / "qmp-status.sock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "vm.pid"

    @property
    def console_log(self) -> Path:
        return self.runtime_dir / "console.log"

    @property
    def process_log(self) -> Path:
        return self.runtime_dir / "hypervisor.log"


@dataclass(frozen=True)
class CheckpointInfo:
    """A saved VM state: what it belongs to, so a wrong restore can be refused."""

    name: str
    vm: str
    spec_digest: str
    hypervisor: str
    hypervisor_version: str
    created_at: float
    size_bytes: int
    suspended: bool
    disk_snapshots: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["disk_snapshots"] = list(self.disk_snapshots)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        return cls(**{**data, "disk_snapshots": tuple(data.get("disk_snapshots", ()))})


class HypervisorDriver(ABC):
    """One hypervisor, driven on this host."""

    name: str

    @abstractmethod
    def facts(self) -> HostFacts:
        """Architecture, CPU, hypervisor version, CPU models and machine types, memory."""

    def memory_free_mib(self) -> int | None:
        """The host's free memory now, read cheaply (no probe, no subprocess: it is read at
        every heartbeat); None where only facts() can tell."""
        return None

    @abstractmethod
    def define(self, spec: VmSpec) -> None:
        """Check that `spec` can run here and create what it needs (disk images).

        :raise UserInputError: naming the field this host cannot satisfy.
        """

    @abstractmethod
    def undefine(
        self, spec: VmSpec, layout: VmLayout, *, delete_disks: bool, keep_logs: bool = False
    ) -> None:
        """Remove what `define` and `start` made (runtime files; disks when asked; the
        console and hypervisor logs stay when `keep_logs`, as after a VM left the node)."""

    @abstractmethod
    def start(self, spec: VmSpec, layout: VmLayout, *, paused: bool = False) -> RuntimeStatus:
        """Start the VM; returns once its hypervisor process answers."""

    @abstractmethod
    def shutdown(self, layout: VmLayout, timeout: float) -> bool:
        """Ask the guest to power off; force it after `timeout`. True if it went gracefully."""

    @abstractmethod
    def kill(self, layout: VmLayout) -> None:
        """Stop the VM at once."""

    @abstractmethod
    def pause(self, layout: VmLayout) -> None: ...

    @abstractmethod
    def resume(self, layout: VmLayout) -> None: ...

    @abstractmethod
    def status(self, layout: VmLayout) -> RuntimeStatus:
        """The VM's state as observed now."""

    @abstractmethod
    def checkpoint(
        self, spec: VmSpec, layout: VmLayout, name: str, *, suspend: bool
    ) -> CheckpointInfo:
        """Save memory and device state to a file in `layout.checkpoint_dir/name` with a
        consistent snapshot of every disk; the VM runs on afterwards unless `suspend`."""

    @abstractmethod
    def restore(self, spec: VmSpec, layout: VmLayout, name: str) -> RuntimeStatus:
        """Bring the VM back exactly as checkpoint `name` saved it, running.

        :raise ConflictError: the checkpoint belongs to another spec or hypervisor version.
        """

    @abstractmethod
    def delete_checkpoint(self, spec: VmSpec, layout: VmLayout, name: str) -> None: ...

    @abstractmethod
    def list_checkpoints(self, layout: VmLayout) -> list[CheckpointInfo]: ...

    def release(self, spec: VmSpec, layout: VmLayout) -> None:
        """Give back what a stopped VM held here (taps, control sockets, runtime files),
        keeping its disks and its logs."""
        self.undefine(spec, layout, delete_disks=False, keep_logs=True)


@dataclass(frozen=True)
class MigrationTuning:
    """What both sides of a migration must agree on, and the source's limits."""

    tls_dir: Path | None = None  # cluster CA and this node's certificate, QEMU's names
    tls_hostname: str | None = None  # the target's name or address in its certificate (src)
    tls_peer_name: str | None = None  # dst: accept only the source node of this name (CN)
    multifd_channels: int = 1  # > 1: parallel streams
    postcopy: bool = False  # allow switching to post-copy
    bandwidth_bytes: int = 0  # 0: unlimited
    downtime_ms: int = 300  # the initial downtime limit
    auto_converge: bool = True  # armed at the start, engaged by the policy


class MigrationState(StrEnum):
    """Where an outgoing migration is, in corral's words: each driver maps its hypervisor's
    states into these (QEMU's in qemu/migration.py, bhyve's tunnel's in bhyve/driver.py), and
    nothing above the drivers sees a hypervisor's own strings."""

    NONE = "none"  # no migration started
    SETUP = "setup"
    ACTIVE = "active"  # pre-copy: RAM (and device state) moving while the guest runs
    POSTCOPY = "postcopy-active"  # the guest runs on the target, pages still arriving
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)

    @property
    def in_flight(self) -> bool:
        """The source's hypervisor is still sending (or about to): cancel it first."""
        return self in (MigrationState.SETUP, MigrationState.ACTIVE, MigrationState.CANCELLING)


@dataclass(frozen=True)
class MigrationStatus:
    """One observation of an outgoing migration (the policy's input)."""

    state: MigrationState
    elapsed_ms: int = 0
    ram_total: int = 0
    ram_transferred: int = 0
    ram_remaining: int = 0
    throughput_mbps: float = 0.0
    dirty_pages_rate: int = 0  # pages per second
    page_size: int = 4096
    iterations: int = 0  # dirty-sync-count
    expected_downtime_ms: int = 0
    downtime_ms: int | None = None  # known once completed
    setup_ms: int | None = None
    throttle_percent: int = 0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state.finished

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


ALL_MIGRATION_FEATURES = frozenset(
    {"downtime-limit", "auto-converge", "postcopy", "multifd", "force", "disk-copy"}
)


class MigrationDriver(DiskCopyDriver, HypervisorDriver):
    """A hypervisor driver with the migration primitives, each run on its named side, and
    the finalize steps both sides end with. Every driver is one (QEMU, bhyve): the same
    object is the VM service's driver and the migration's."""

    # What the hypervisor's migration can do beyond sending the VM: a raisable downtime
    # limit, auto-converge, post-copy, parallel streams, forcing completion, copying local
    # disks while the VM runs (disk_copy_contract.py).
    migration_features: frozenset[str] = ALL_MIGRATION_FEATURES
    # The incoming VM waits, paused, until the target resumes it (QEMU's -S). Without it
    # (bhyve: the receive resumes the VM itself) nothing can come between the stream's end
    # and the VM running there, such as etcd's ownership swap.
    arrives_paused: bool = True

    def option_refusals(
        self, *, postcopy: bool, channels: int, local_disks: bool = False
    ) -> list[tuple[str, str]]:
        """(code, message) for each asked-for option this hypervisor cannot do."""
        who = self.name
        reasons = []
        if local_disks and "disk-copy" not in self.migration_features:
            reasons.append(
                (
                    "disk-copy",
                    f"{who}'s migration sends memory and devices only, it has no disk copy:"
                    " --with-local-disks refused; the VM's disks must be on storage both"
                    " nodes share",
                )
            )
        elif local_disks and postcopy:
            reasons.append(
                (
                    "postcopy",
                    "--postcopy with --with-local-disks refused: in post-copy the target runs"
                    " before the source has confirmed that its copy of the disks is whole",
                )
            )
        if postcopy and "postcopy" not in self.migration_features:
            reasons.append(("postcopy", f"{who} has no post-copy migration"))
        if channels > 1 and "multifd" not in self.migration_features:
            reasons.append(
                ("parallel", f"{who} migrates over one stream; --parallel {channels} refused")
            )
        return reasons

    @abstractmethod
    def compatible(
        self, spec: VmSpec, source: dict[str, Any], target: dict[str, Any]
    ) -> list[tuple[str, str]]:
        """(code, message) for each reason `spec` cannot move from a host with facts
        `source` to one with facts `target`; empty when it can."""

    @abstractmethod
    def migration_tls_dir(
        self, layout: VmLayout, endpoint: str, ca: Path, cert: Path, key: Path
    ) -> Path:
        """Lay out the cluster CA and this node's certificate as the hypervisor wants them
        for `endpoint` ("server" on the destination, "client" on the source)."""

    @abstractmethod
    def migration_listen(
        self, spec: VmSpec, layout: VmLayout, address: str, port: int, tuning: MigrationTuning
    ) -> None:
        """Destination: start the VM waiting for its state and listen on address:port."""

    @abstractmethod
    def migration_incoming_done(self, layout: VmLayout, *, resume: bool = True) -> bool:
        """Destination: True once the VM runs here (resuming it if it arrived paused); with
        `resume` false, True once it arrived, left paused (its disk copy ends first).

        :raise HypervisorError: the incoming VM died.
        """

    @abstractmethod
    def migration_start(
        self, layout: VmLayout, address: str, port: int, tuning: MigrationTuning
    ) -> None:
        """Source: start sending the VM to address:port."""

    @abstractmethod
    def migration_status(self, layout: VmLayout) -> MigrationStatus: ...

    def migration_wait(self, layout: VmLayout, timeout: float) -> None:
        """Either side: return when the migration may have changed since the last
        `migration_status` or `migration_incoming_done` (the hypervisor said so), or after
        `timeout` seconds. A hypervisor that says nothing simply waits `timeout`."""
        time.sleep(timeout)

    @abstractmethod
    def migration_tune(
        self,
        layout: VmLayout,
        *,
        downtime_ms: int | None = None,
        engage_auto_converge: bool = False,
    ) -> None:
        """Source: change the limits of the running migration."""

    @abstractmethod
    def migration_postcopy(self, layout: VmLayout) -> None: ...

    @abstractmethod
    def migration_force(self, layout: VmLayout) -> None:
        """Source: finish now: pause the guest so the rest copies without new dirt."""

    @abstractmethod
    def migration_cancel(self, layout: VmLayout) -> None:
        """Source: abort; the VM stays (and runs) here."""

    @abstractmethod
    def migration_resume_source(self, layout: VmLayout) -> None:
        """Source: make the VM run again after a failed or cancelled migration."""

    @abstractmethod
    def measure_dirty_rate(self, layout: VmLayout, seconds: int) -> int:
        """Source: the guest's dirty rate in MiB/s, measured over `seconds`."""

    def resident_guest_bytes(self, layout: VmLayout, ram_bytes: int) -> int | None:
        """Source: how much of the guest's RAM the host holds now (pages the guest never
        touched are not resident, and a migration sends them as zero pages, at almost no
        cost); None when this hypervisor cannot say."""
        return None

    def migration_finalize_source(
        self, spec: VmSpec | None, layout: VmLayout, *, success: bool
    ) -> None:
        """Source, once the outcome is known. Success: the VM runs on the target, so this
        copy is stopped and released (disks and logs stay; without a spec, only stopped).
        Failure: the VM must run here again, resumed if it was paused or sent."""
        if not success:
            self.migration_resume_source(layout)
            return
        self.kill(layout)
        if spec is not None:
            self.release(spec, layout)

    def migration_finalize_target(self, spec: VmSpec, layout: VmLayout, *, success: bool) -> None:
        """Target, once the outcome is known. Failure: the half-arrived copy is stopped and
        released (the disks are the source's and stay). Success: the VM runs; nothing to do."""
        if success:
            return
        self.kill(layout)
        self.release(spec, layout)
