"""What the migration layer needs from its node, injected so tests can script it: the VM
service, the driver's migration primitives, the journal, peers and TLS files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corral.client import AgentClient
from corral.hypervisors.base import MigrationDriver
from corral.migration.journal import MigrationJournal
from corral.migration.preflight import NodeView
from corral.vms.service import VmService


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass
class MigrationServices:
    """What the orchestrator needs from the node, injected (so tests can script it)."""

    node: str
    vms: VmService
    journal: MigrationJournal
    peer: Callable[[str], AgentClient]
    target_view: Callable[[str], NodeView | None]
    local_facts: Callable[[], dict[str, Any]]
    tls: TlsFiles | None
    is_member: Callable[[str], bool] = lambda _name: True
    # Heard from within the cluster's offline time (heartbeats), as the registry says.
    is_online: Callable[[str], bool] = lambda _name: True
    pin_peer: Callable[[str], Callable[[], AgentClient]] | None = None
    members: Callable[[], list[str]] = lambda: []  # every member's name (placement)
    poll_interval: float = 0.1  # the longest wait for the hypervisor's next event
    watch_interval: float = 0.5  # how often the transfer looks at the target's side
    clock: Callable[[], float] = time.monotonic
    # With the state in etcd (agent/etcd_membership.py): raises ConflictError while the
    # cluster cannot agree (no majority, no lease here): a migration then stops before its
    # switchover. And whether this node may run its paused copy again after a failure.
    require_state: Callable[[str, str | None], None] = lambda _doing, _vm: None
    may_resume: Callable[[str], tuple[bool, str]] = lambda _vm: (True, "")
    handoff_in_etcd: bool = False  # the target swaps the VM's ownership key before it runs

    @property
    def driver(self) -> MigrationDriver:
        """The one driver handle: the VM service's."""
        return self.vms.driver

    def pinned(self, target: str) -> MigrationServices:
        """These services with `target` reached at the address it has now, even if it is
        removed from the cluster meanwhile (so a migration can still cancel on it)."""
        if self.pin_peer is None:
            return self
        reach_target = self.pin_peer(target)
        others = self.peer

        def peer(name: str) -> AgentClient:
            return reach_target() if name == target else others(name)

        return replace(self, peer=peer)
