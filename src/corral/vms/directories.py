"""A node's VM directories, like CBSD's: data (disks), config (specs) and system (checkpoints),
each possibly on shared storage and each carrying a storage identity file; plus the node-local
runtime directory (QMP sockets, pid files, console logs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.hypervisors.base import VmLayout
from corral.storage.identity import StorageIdentity, describe, ensure_identity

ROLES = ("data", "config", "system")


@dataclass(frozen=True)
class NodeDirectories:
    data: Path
    config: Path
    system: Path
    run: Path

    def by_role(self) -> dict[str, Path]:
        return {"data": self.data, "config": self.config, "system": self.system}

    def ensure(self, node: str) -> dict[str, StorageIdentity]:
        """Create the directories and their identity files (written once)."""
        self.run.mkdir(parents=True, exist_ok=True)
        return {role: ensure_identity(path, role, node) for role, path in self.by_role().items()}

    def describe(self) -> dict[str, Any]:
        """Each directory's path, identity and filesystem (reported in the node's facts)."""
        return {role: describe(path) for role, path in self.by_role().items()}

    def layout(self, vm: str) -> VmLayout:
        return VmLayout(
            runtime_dir=self.run / "vms" / vm, checkpoint_dir=self.system / vm / "checkpoints"
        )

    def disk_path(self, vm: str, index: int, fmt: str = "qcow2") -> Path:
        return self.data / vm / f"disk{index}.{'img' if fmt == 'raw' else fmt}"

    def spec_file(self, vm: str) -> Path:
        return self.config / f"{vm}.json"
