"""The driver contract every hypervisor implements (see ../shared/DESIGN.md), and the value
types it speaks in. This module grows with the QEMU driver issue; today it holds the facts a
node reports about itself.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_flags"] = list(self.cpu_flags)
        return data
