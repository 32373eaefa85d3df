"""The driver contract every hypervisor implements (see ../shared/DESIGN.md), and the value
types it speaks in. A driver is stateless: each call gets the VM's spec and where its files
are (`VmLayout`), so an agent restarted at any time finds its VMs again.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("cpu_flags", "cpu_models", "machine_types"):
            data[key] = list(data[key])
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

    @abstractmethod
    def define(self, spec: VmSpec) -> None:
        """Check that `spec` can run here and create what it needs (disk images).

        :raise UserInputError: naming the field this host cannot satisfy.
        """

    @abstractmethod
    def undefine(self, spec: VmSpec, layout: VmLayout, *, delete_disks: bool) -> None:
        """Remove what `define` and `start` made (runtime files; disks when asked)."""

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
