"""The source's side of a migration without QEMU: a fake driver and a fake target (tests/
fakes), real SQLite records, journal and task. Milliseconds per test: success and handoff,
the rollback order (the target's task cancelled before the source resumes), the target
lost mid-transfer, and a timeout with abort and with force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.database import Database
from corral.hypervisors.base import MigrationState as M
from corral.hypervisors.base import RunState
from corral.migration.journal import MigrationJournal
from corral.migration.orchestrator import MigrationFailed, run_source
from corral.migration.preflight import NodeView
from corral.migration.services import MigrationServices
from corral.model import VmSpec
from corral.tasks.runner import TaskContext
from corral.tasks.store import TaskStore
from corral.vms.directories import NodeDirectories
from corral.vms.inventory import VmInventory
from corral.vms.service import VmService
from tests.fakes.driver import FakeDriver
from tests.fakes.peer import FakePeer

FACTS = {
    "arch": "x86_64",
    "memory_free_mib": 4096,
    "bridges": [],
    "storage": {r: {"path": f"/shared/{r}", "id": f"id-{r}"} for r in ("data", "config", "system")},
}


class Rig:
    def __init__(self, root: Path, script: list[M]) -> None:
        self.calls: list[str] = []
        self.driver = FakeDriver(self.calls, script)
        self.peer = FakePeer(self.calls, self.driver)
        self.online = True
        db = Database(root / "corral.db")
        dirs = NodeDirectories(root / "data", root / "config", root / "system", root / "run")
        self.vms = VmService("src", VmInventory(db), self.driver, dirs)
        self.vms.inventory.add(VmSpec(name="vm1", memory_mib=64), "src", "running")
        self.driver.vms[self.vms.layout("vm1").runtime_dir] = RunState.RUNNING
        self.journal = MigrationJournal(db)
        self.store = TaskStore(db, root / "logs")
        self.services = MigrationServices(
            node="src",
            vms=self.vms,
            journal=self.journal,
            peer=lambda _name: self.peer,  # type: ignore[arg-type,return-value]
            target_view=lambda name: NodeView(name, FACTS),
            local_facts=lambda: FACTS,
            tls=None,
            is_online=lambda _name: self.online,
            sleep=lambda _s: None,
            poll_interval=0,
            watch_interval=0,
        )

    def migrate(self, **options: Any) -> dict[str, Any]:
        record = self.journal.begin("vm1", "src", "dst")
        args = {"migration_id": record.id, "options": {"vm": "vm1", "target": "dst", **options}}
        ctx = TaskContext(self.store, self.store.create("migration.send", args, "test"))
        return run_source(self.services, ctx)

    def source_state(self) -> RunState:
        return self.vms.status("vm1").state


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, [M.SETUP, M.ACTIVE, M.ACTIVE])


def test_a_completed_migration_hands_the_vm_to_the_target(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [M.SETUP, M.ACTIVE, M.COMPLETED])
    summary = rig.migrate()
    assert summary["target"] == "dst"
    assert rig.vms.inventory.all() == []  # the target records it now
    assert rig.calls[-2:] == ["source: kill", "source: undefine"]
    assert rig.peer.runs == RunState.RUNNING


def test_a_rollback_cancels_the_target_before_the_source_resumes(rig: Rig) -> None:
    with pytest.raises(MigrationFailed, match="aborted by policy"):
        rig.migrate(timeout_s=1, on_timeout="abort")
    cancel_target = rig.calls.index("target: POST /tasks/t1/cancel")
    cancel_source = rig.calls.index("source: cancel the migration")
    resume = rig.calls.index("source: resume")
    assert cancel_target < cancel_source < resume
    assert rig.source_state() == RunState.RUNNING
    assert rig.vms.record("vm1").state == "running"


def test_a_target_whose_receive_task_ends_is_lost_and_the_vm_stays(rig: Rig) -> None:
    rig.driver.script = [M.ACTIVE] * 1000  # QEMU alone would go on for a long time
    rig.peer.ends_as = "failed"
    with pytest.raises(MigrationFailed, match="target lost: the receive task on dst failed"):
        rig.migrate()
    assert rig.source_state() == RunState.RUNNING
    assert "source: resume" in rig.calls


def test_a_target_gone_offline_is_lost_and_the_vm_stays(rig: Rig) -> None:
    rig.driver.script = [M.ACTIVE] * 1000
    rig.online = False
    with pytest.raises(MigrationFailed, match="target lost: dst went offline"):
        rig.migrate()
    assert rig.source_state() == RunState.RUNNING


def test_a_timeout_with_force_pauses_the_guest_and_completes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [M.ACTIVE, M.ACTIVE, M.ACTIVE, M.COMPLETED])
    summary = rig.migrate(timeout_s=1, on_timeout="force")
    assert "source: force" in rig.calls
    assert any("forcing completion" in a for a in summary["policy_actions"])
    assert rig.peer.runs == RunState.RUNNING


def test_a_refused_preflight_moves_nothing(rig: Rig) -> None:
    rig.driver.vms.clear()  # the VM is not running
    with pytest.raises(Exception, match="vm-not-running"):
        rig.migrate()
    assert not any(c.startswith("target:") for c in rig.calls)
