"""What the migration layer needs from its node, injected so tests can script it: the VM
service, the driver's migration primitives, the journal, peers and TLS files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
    driver: MigrationDriver
    journal: MigrationJournal
    peer: Callable[[str], AgentClient]
    target_view: Callable[[str], NodeView | None]
    local_facts: Callable[[], dict[str, Any]]
    tls: TlsFiles | None
    sleep: Callable[[float], None] = time.sleep
    poll_interval: float = 0.25
