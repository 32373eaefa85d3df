"""The source's side of a migration without QEMU: a fake driver and a fake target (tests/
fakes), real SQLite records, journal and task. Milliseconds per test: success and handoff,
the rollback order (the target's task cancelled before the source resumes), the target
lost mid-transfer, and a timeout with abort and with force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.database import Database
from corral.errors import ConflictError, NotFoundError
from corral.hypervisors.base import MigrationState as M
from corral.hypervisors.base import RunState
from corral.migration.journal import MigrationJournal
from corral.migration.operations import MigrationDesk
from corral.migration.options import MIB, MigrationOptions
from corral.migration.orchestrator import MigrationFailed, run_source
from corral.migration.preflight import NodeView
from corral.migration.services import MigrationServices
from corral.migration.source_checks import PreflightFailed
from corral.model import DiskSpec, VmSpec
from corral.tasks.runner import TaskContext
from corral.tasks.store import TaskStore
from corral.vms.directories import NodeDirectories
from corral.vms.inventory import VmInventory
from corral.vms.service import VmService
from tests.fakes.driver import FakeDriver
from tests.fakes.peer import FakePeer

GIB = 1024 * MIB
FACTS = {
    "arch": "x86_64",
    "memory_free_mib": 4096,
    "bridges": [],
    "storage": {r: {"path": f"/shared/{r}", "id": f"id-{r}"} for r in ("data", "config", "system")},
}


LOCAL = {
    **FACTS,
    "storage": {r: {"path": f"/node2/{r}", "id": f"n2-{r}"} for r in ("data", "config", "system")},
}


class Rig:
    def __init__(self, root: Path, script: list[M], target_facts: dict[str, Any] = FACTS) -> None:
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
            target_view=lambda name: NodeView(name, target_facts),
            local_facts=lambda: FACTS,
            tls=None,
            is_online=lambda _name: self.online,
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


def desk_of(rig: Rig, queued: dict[str, str]) -> MigrationDesk:
    def submit(args: dict[str, Any], owner: str) -> dict[str, Any]:
        queued[args["options"]["vm"]] = "task1"
        return {"id": "task1", "args": args}

    return MigrationDesk(
        services=rig.services,
        submit=submit,
        migrating=queued.get,
        task_alive=lambda _task_id: True,
        cancel_task=lambda task_id: {"id": task_id, "cancel_requested": True},
        probe_link=lambda _target: 100.0 * MIB,
    )


def test_the_desk_checks_once_queues_once_and_refuses_a_second_start(rig: Rig) -> None:
    queued: dict[str, str] = {}
    desk = desk_of(rig, queued)
    started = desk.start(MigrationOptions(vm="vm1", target="dst"), "cli@src")
    assert started["task"]["args"]["preflight"] == "passed"
    with pytest.raises(ConflictError, match="vm1 is migrating to dst"):
        desk.start(MigrationOptions(vm="vm1", target="dst"), "cli@src")
    assert desk.cancel("vm1") == {"id": "task1", "cancel_requested": True}
    with pytest.raises(NotFoundError):
        desk.cancel("other")


def test_the_desk_refuses_with_every_reason_and_queues_nothing(rig: Rig) -> None:
    rig.driver.vms.clear()
    queued: dict[str, str] = {}
    with pytest.raises(PreflightFailed) as refused:
        desk_of(rig, queued).start(MigrationOptions(vm="vm1", target="dst"), "cli@src")
    assert [r["code"] for r in refused.value.details] == ["vm-not-running"]  # type: ignore[attr-defined]
    assert queued == {}
    assert rig.journal.latest("vm1") is None


def test_the_plan_estimates_from_what_it_measured(rig: Rig) -> None:
    answer = desk_of(rig, {}).plan(MigrationOptions(vm="vm1", target="dst", bandwidth_mib=50))
    assert answer["allowed"]
    estimate = answer["estimate"]
    assert estimate["link_bytes_per_s"] == 100 * MIB
    assert estimate["bandwidth_bytes_per_s"] == 50 * MIB  # capped by --bandwidth
    assert estimate["basis"].startswith("the link probe")  # no past migration to dst
    assert estimate["converges"]  # the fake guest dirties nothing
    assert estimate["to_send_bytes"] == 64 * MIB  # the fake cannot say what is resident
    assert estimate["fixed_s"] is None  # not known before a first migration: left out
    assert estimate["expected_s"] == pytest.approx(64 / 50, abs=0.01)


def test_the_hold_taken_at_start_is_adopted_by_the_task_and_ends_with_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [M.SETUP, M.ACTIVE, M.COMPLETED])
    submitted: list[dict[str, Any]] = []

    def submit(args: dict[str, Any], owner: str) -> dict[str, Any]:
        submitted.append(args)
        return {"id": "task1"}

    desk = MigrationDesk(
        services=rig.services,
        submit=submit,
        migrating=lambda _vm: None,
        task_alive=lambda _task_id: True,
        cancel_task=lambda task_id: {},
        probe_link=lambda _target: 1.0,
    )
    desk.start(MigrationOptions(vm="vm1", target="dst"), "cli@src")
    assert rig.vms.held("vm1") == "migrating to dst"  # queued: held already
    with pytest.raises(ConflictError, match="vm1 is migrating to dst"):
        rig.vms.changeable("vm1")
    ctx = TaskContext(rig.store, rig.store.create("migration.send", submitted[0], "test"))
    run_source(rig.services, ctx)  # adopts the hold rather than refusing itself
    assert rig.vms.held("vm1") is None


def test_a_hold_whose_task_ended_before_running_lets_go(rig: Rig) -> None:
    alive = {"task1": True}
    desk = desk_of(rig, {})
    desk.task_alive = alive.__getitem__
    desk.start(MigrationOptions(vm="vm1", target="dst"), "cli@src")
    assert rig.vms.held("vm1") is not None
    alive["task1"] = False  # cancelled while queued: its migration will never run
    assert rig.vms.held("vm1") is None
    rig.vms.changeable("vm1")  # free again


class DiskRig(Rig):
    """vm1 with one disk of its own (no directory shared with the target)."""

    def __init__(self, root: Path, script: list[M]) -> None:
        super().__init__(root, script, LOCAL)
        self.disk = root / "data" / "vm1" / "disk0.qcow2"
        self.disk.parent.mkdir(parents=True)
        self.disk.write_bytes(b"guest data")
        self.spec_file = root / "config" / "vm1.json"
        self.spec_file.parent.mkdir(parents=True)
        self.spec_file.write_text("{}")
        self.vms.inventory.remove("vm1")
        spec = VmSpec(name="vm1", memory_mib=64, disks=(DiskSpec(path=self.disk),))
        self.vms.inventory.add(spec, "src", "running")


def test_without_the_flag_a_local_disk_moves_nothing(tmp_path: Path) -> None:
    rig = DiskRig(tmp_path, [M.SETUP, M.COMPLETED])
    with pytest.raises(PreflightFailed, match=r"\[local-disks\].*8.0 MiB of 64.0 MiB to copy"):
        rig.migrate()
    assert not any(c.startswith("target:") for c in rig.calls)


def test_local_disks_are_in_step_before_the_ram_moves_and_released_after(
    tmp_path: Path,
) -> None:
    rig = DiskRig(tmp_path, [M.SETUP, M.ACTIVE, M.COMPLETED])
    summary = rig.migrate(with_local_disks=True)
    order = [
        "source: mirror disks [0]",
        "source: migrate to 127.0.0.1:4444",
        "source: end mirrors (abandon=False)",
        "target: POST /runtime/incoming/t1/release",
        "source: kill",
    ]
    assert [c for c in rig.calls if c in order] == order
    # Watched until in step, then once per look at the target while the RAM moves.
    assert rig.driver.looks > rig.driver.copy_looks
    assert summary["disks"]["copied"] == 1
    assert summary["disks"]["data_bytes"] == 8 << 20
    assert not rig.disk.exists()  # the source's image goes with a success
    assert not rig.spec_file.exists()  # the target wrote its own config
    assert rig.peer.runs == RunState.RUNNING


def test_keep_source_disks_keeps_the_image(tmp_path: Path) -> None:
    rig = DiskRig(tmp_path, [M.SETUP, M.COMPLETED])
    rig.migrate(with_local_disks=True, keep_source_disks=True)
    assert rig.disk.read_bytes() == b"guest data"


def test_a_mirror_that_fails_during_the_copy_rolls_back_before_any_ram_moves(
    tmp_path: Path,
) -> None:
    rig = DiskRig(tmp_path, [M.SETUP, M.COMPLETED])
    rig.driver.copy_fails_at = 2
    with pytest.raises(MigrationFailed, match="No space left on device"):
        rig.migrate(with_local_disks=True)
    assert not any(c.startswith("source: migrate") for c in rig.calls)
    cancel_target = rig.calls.index("target: POST /tasks/t1/cancel")
    abandon = rig.calls.index("source: end mirrors (abandon=True)")
    resume = rig.calls.index("source: resume")
    assert cancel_target < abandon < resume
    assert rig.disk.read_bytes() == b"guest data"
    assert rig.spec_file.exists()
    assert rig.vms.record("vm1").state == "running"


def test_a_copy_not_whole_at_switchover_is_never_released_and_the_source_resumes(
    tmp_path: Path,
) -> None:
    rig = DiskRig(tmp_path, [M.SETUP, M.ACTIVE, M.COMPLETED])
    rig.driver.mirror_broken = True
    with pytest.raises(MigrationFailed, match="not whole"):
        rig.migrate(with_local_disks=True)
    assert not any(c.endswith("/release") for c in rig.calls)
    assert rig.calls.index("target: POST /tasks/t1/cancel") < rig.calls.index("source: resume")
    assert rig.source_state() == RunState.RUNNING
    assert rig.peer.runs == RunState.STOPPED  # the target never ran it
    assert rig.disk.read_bytes() == b"guest data"


def test_a_mirror_that_fails_while_the_ram_moves_cancels_the_migration(tmp_path: Path) -> None:
    rig = DiskRig(tmp_path, [M.SETUP] + [M.ACTIVE] * 100)
    rig.driver.copy_fails_at = rig.driver.copy_looks + 2  # in step first, then broken
    with pytest.raises(MigrationFailed, match="No space left on device"):
        rig.migrate(with_local_disks=True)
    assert "source: migrate to 127.0.0.1:4444" in rig.calls
    assert rig.calls.index("source: cancel the migration") < rig.calls.index("source: resume")
    assert rig.source_state() == RunState.RUNNING
    assert rig.disk.read_bytes() == b"guest data"


def test_the_plan_adds_the_disk_copy_it_would_make(tmp_path: Path) -> None:
    rig = DiskRig(tmp_path, [M.SETUP, M.COMPLETED])
    answer = desk_of(rig, {}).plan(MigrationOptions(vm="vm1", target="dst"))
    assert [r["code"] for r in answer["reasons"]] == ["storage-not-shared"] * 3 + [
        "local-disks"
    ]  # the flag is not given: refused, and priced
    copy = answer["estimate"]["disk_copy"]
    assert copy["disks"] == 1
    assert copy["data_bytes"] == 8 << 20
    assert copy["copy_s"] == pytest.approx(8 / 100, abs=0.01)  # at the link probe's 100 MiB/s
    ram_s = 64 / 100  # the fake guest dirties nothing: one pass at the probe's rate
    assert answer["estimate"]["expected_s"] == pytest.approx(ram_s + 8 / 100, abs=0.02)
    allowed = desk_of(rig, {}).plan(MigrationOptions(vm="vm1", target="dst", with_local_disks=True))
    assert allowed["allowed"]


def test_etcd_lost_mid_transfer_stops_before_the_switchover(rig: Rig) -> None:
    rig.driver.script = [M.ACTIVE] * 1000
    looks: list[str | None] = []

    def require_state(doing: str, vm: str | None) -> None:
        looks.append(vm)
        if len(looks) > 2:  # asked, started, then lost during the transfer
            raise ConflictError(f"cannot {doing}: the cluster state (etcd) is unavailable")

    rig.services.require_state = require_state
    with pytest.raises(MigrationFailed, match=r"etcd.*stopped before the switchover"):
        rig.migrate()
    assert looks[:2] == ["vm1", None]  # the start asks for the VM's owner; the watch does not
    assert "target: POST /tasks/t1/cancel" in rig.calls
    assert rig.source_state() == RunState.RUNNING
    assert rig.vms.record("vm1").state == "running"


def test_a_lost_swap_leaves_the_source_paused_unless_etcd_says_it_is_its_own(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, [M.SETUP, M.ACTIVE, M.COMPLETED])
    rig.peer.refuses_handoff = True
    rig.services.may_resume = lambda vm: (False, f"etcd says node9 owns {vm}")
    with pytest.raises(MigrationFailed, match=r"src's copy stays paused \(etcd says node9 owns"):
        rig.migrate()
    assert "source: resume" not in rig.calls
    assert rig.peer.runs == RunState.STOPPED  # the target never ran it
    record = rig.vms.record("vm1")
    assert record.owner == "src"
    assert rig.source_state() != RunState.RUNNING
    # The same refusal with etcd saying the VM is still the source's: it runs on there.
    again = Rig(tmp_path / "again", [M.SETUP, M.ACTIVE, M.COMPLETED])
    again.peer.refuses_handoff = True
    again.services.may_resume = lambda _vm: (True, "etcd says this node owns it")
    with pytest.raises(MigrationFailed, match="runs on src again"):
        again.migrate()
    assert again.source_state() == RunState.RUNNING


def test_with_etcd_a_target_that_cannot_arrive_paused_is_refused(rig: Rig) -> None:
    rig.services.handoff_in_etcd = True
    rig.driver.arrives_paused = False
    with pytest.raises(PreflightFailed, match=r"\[state-handoff\]"):
        desk_of(rig, {}).start(MigrationOptions(vm="vm1", target="dst"), "cli@src")
    rig.driver.arrives_paused = True
    assert desk_of(rig, {}).plan(MigrationOptions(vm="vm1", target="dst"))["allowed"]
