"""Faults injected into live migrations: whatever fails, the VM runs on exactly one node
(or, when its only QEMU died, on none, and nothing starts a second copy), its counter never
goes back, no write is lost, and the records of both nodes agree with what runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from corral.commands import run
from corral.lab import agents
from corral.storage.identity import IDENTITY_FILE
from corral.waiting import wait_for
from tests.faults.scenario import Scenario, cut_migration_link, kill_agent, qemu_pid, report
from tests.integration.vm_helpers import corral_ok

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


def test_kill_9_of_the_destination_qemu_during_transfer(scenario: Scenario) -> None:
    scenario.migrate_in_background()
    scenario.wait_transfer()
    os.kill(qemu_pid(scenario, 1), signal.SIGKILL)
    scenario.wait_migration_command()
    assert scenario.migration is not None
    assert scenario.migration.returncode == 14
    outcome = scenario.check()
    assert outcome["runs_on"] == ["node1"]
    assert outcome["tcp_survived"]
    report("destination QEMU killed during transfer", outcome)


def test_kill_9_of_the_destination_agent_during_transfer(scenario: Scenario) -> None:
    scenario.migrate_in_background()
    scenario.wait_transfer()
    kill_agent(scenario, 1)
    agents.start_agent(scenario.lab, scenario.lab.nodes[1])
    scenario.wait_migration_command()
    outcome = scenario.check()
    assert outcome["tcp_survived"]
    report("destination agent killed during transfer, restarted", outcome)


def test_migration_link_cut_during_transfer_then_restored(scenario: Scenario) -> None:
    lab = scenario.lab
    scenario.migrate_in_background()
    scenario.wait_transfer()
    cut_migration_link(lab)
    scenario.wait_migration_command()
    outcome = scenario.check()
    assert outcome["tcp_survived"]
    report("migration link down 3 s during transfer", outcome)


def test_kill_9_of_the_source_agent_during_transfer(scenario: Scenario) -> None:
    scenario.migrate_in_background()
    scenario.wait_transfer()
    kill_agent(scenario, 0)
    agents.start_agent(scenario.lab, scenario.lab.nodes[0])
    scenario.wait_migration_command()
    outcome = scenario.check()
    assert outcome["tcp_survived"]
    report("source agent killed during transfer, restarted", outcome)


def test_kill_9_of_the_source_agent_just_after_switchover(scenario: Scenario) -> None:
    scenario.migrate_in_background()
    scenario.wait_transfer()

    def switched() -> bool:
        task = scenario.send_task()
        return task is not None and task["progress"].get("phase") in ("switchover", "done")

    wait_for(switched, timeout=120, what="the switchover", interval=0.02)
    kill_agent(scenario, 0)
    agents.start_agent(scenario.lab, scenario.lab.nodes[0])
    scenario.wait_migration_command()
    outcome = scenario.check()
    assert outcome["runs_on"] == ["node2"]
    assert outcome["tcp_survived"]
    report("source agent killed just after switchover, restarted", outcome)


def test_kill_9_of_the_source_qemu_during_transfer(scenario: Scenario) -> None:
    scenario.migrate_in_background()
    scenario.wait_transfer()
    os.kill(qemu_pid(scenario, 0), signal.SIGKILL)
    scenario.wait_migration_command()
    assert scenario.migration is not None
    assert scenario.migration.returncode != 0
    outcome = scenario.check(lost_allowed=True)
    assert outcome["runs_on"] == []  # lost with its only QEMU; never started again
    report("source QEMU killed during transfer (VM lost)", outcome)


def test_the_destination_state_directory_full(scenario: Scenario) -> None:
    lab = scenario.lab
    node2 = lab.nodes[1]
    small = node2.local_dir / "state-small"
    filler = small / "filler"
    agents.stop_agent(node2)
    small.mkdir(exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", "size=24m", "corral-fault", str(small)])
    try:
        shutil.copytree(node2.local_dir / "state", small, dirs_exist_ok=True)
        agents.start_agent(lab, node2, extra={"state_dir": str(small)})
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
        )  # until the disk is full
        scenario.migrate_in_background()
        scenario.wait_migration_command()
        assert scenario.migration is not None
        # Refused at preflight (the target cannot answer for its facts) or failed when the
        # target could not record its task: either way nothing may have moved.
        assert scenario.migration.returncode in (4, 14), scenario.migration.stderr
        # A full disk breaks SQLite's WAL for readers too; with space again, the target's
        # records can be read and checked.
        filler.unlink()
        outcome = scenario.check()
        assert outcome["runs_on"] == ["node1"]
        assert outcome["tcp_survived"]
        outcome["error"] = scenario.migration.stderr.strip()[:120]
        report("destination state directory full", outcome)
    finally:
        agents.stop_agent(node2)
        run(["umount", "-l", str(small)], check=False)
        agents.start_agent(lab, node2)


def test_a_storage_identity_that_changes_between_preflight_and_transfer(
    scenario: Scenario,
) -> None:
    """The window is opened without any hook in the product: node2's task workers are kept
    busy, so the receive task the source creates waits in node2's queue after preflight.
    Meanwhile the shared data directory is re-initialised (a new storage identity, as when
    another export gets mounted at the same path); then the workers are freed."""
    target = scenario.target
    with agents.client(target, timeout=10) as c:
        data_dir = Path(c.get("/facts")["storage"]["data"]["path"])
        busy = [
            c.post("/tasks", {"kind": "sleep", "args": {"seconds": 120, "steps": 1200}})["id"]
            for _ in range(2)  # the lab's max_parallel_tasks
        ]
    identity_file = data_dir / IDENTITY_FILE
    original = identity_file.read_text()
    try:
        scenario.migrate_in_background()

        def queued_receive() -> bool:
            with agents.client(target, timeout=5) as c:
                return any(
                    t["kind"] == "migration.receive" and t["state"] == "queued"
                    for t in c.get("/tasks")
                )

        wait_for(queued_receive, timeout=60, what="the receive task to wait in node2's queue")
        changed = json.loads(original) | {"id": uuid.uuid4().hex}
        identity_file.write_text(json.dumps(changed) + "\n")
        with agents.client(target, timeout=10) as c:
            for task_id in busy:
                c.post(f"/tasks/{task_id}/cancel", {})
        scenario.wait_migration_command()
    finally:
        identity_file.write_text(original)
    assert scenario.migration is not None
    assert scenario.migration.returncode == 14, scenario.migration.stderr
    assert "changed since preflight" in scenario.migration.stderr
    outcome = scenario.check()
    assert outcome["runs_on"] == ["node1"]
    assert outcome["tcp_survived"]
    report("storage identity changed between preflight and transfer", outcome)


def test_the_target_removed_from_the_cluster_mid_migration(scenario: Scenario) -> None:
    """Last in the module: node2 stays out of the cluster afterwards."""
    scenario.migrate_in_background()
    scenario.wait_transfer()
    corral_ok(scenario.source, "node", "remove", "node2", "--force")
    scenario.wait_migration_command()
    assert scenario.migration is not None
    assert scenario.migration.returncode == 14
    assert "node2 was removed from the cluster" in scenario.migration.stderr
    outcome = scenario.check()
    assert outcome["runs_on"] == ["node1"]
    assert outcome["tcp_survived"]
    report("target removed from the cluster during transfer", outcome)
