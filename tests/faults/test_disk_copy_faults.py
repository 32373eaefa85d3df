"""Faults injected while a migration copies a VM's local disks (--with-local-disks) in a
lab without shared storage. Whatever fails, the outcome is the other faults' (the VM runs on
exactly one node, no write lost, its TCP stream alive, the records true), and no disk image
is left on the node that does not run it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from corral.commands import run
from corral.lab import agents
from corral.lab.plan import LabPlan
from tests.faults.scenario import Scenario, cut_migration_link, kill_agent, qemu_pid, report
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]
DISK_FILL_MIB = 48  # data the copy sends, at the scenario's 8 MiB/s: about 6 s
FLAG = "--with-local-disks"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cdfl", 2, storage="local") as plan:
        yield plan


def check(s: Scenario) -> dict[str, object]:
    outcome = s.check()
    [runs_on] = outcome["runs_on"]
    for node in s.lab.nodes:
        images = s.images(node)
        if node.name == runs_on:
            assert len(images) == 1, images
        else:
            assert images == [], f"{node.name} keeps {images}"
    return outcome


def test_kill_9_of_the_destination_qemu_during_the_disk_copy(scenario: Scenario) -> None:
    scenario.migrate_in_background(FLAG)
    scenario.wait_disk_copy()
    os.kill(qemu_pid(scenario, 1), signal.SIGKILL)
    scenario.wait_migration_command()
    assert scenario.migration is not None
    assert scenario.migration.returncode == 14, scenario.migration.stdout
    outcome = check(scenario)
    assert outcome["runs_on"] == ["node1"]
    assert outcome["tcp_survived"]
    report("destination QEMU killed during the disk copy", outcome)


def test_migration_link_cut_during_the_disk_copy_then_restored(scenario: Scenario) -> None:
    lab = scenario.lab
    scenario.migrate_in_background(FLAG)
    scenario.wait_disk_copy()
    cut_migration_link(lab)
    scenario.wait_migration_command()
    outcome = check(scenario)
    assert outcome["tcp_survived"]
    report("migration link down 3 s during the disk copy", outcome)


def test_the_destination_data_directory_full_mid_copy(scenario: Scenario) -> None:
    """node2's data directory becomes a small filesystem of its own (an ext4 image on a
    loop device: QEMU opens images with O_DIRECT, which tmpfs refuses), filled up once the
    copy runs. Its agent is restarted on it: an agent runs in its own mount namespace (ip
    netns exec), which sees only what was mounted before it started."""
    lab = scenario.lab
    node2 = lab.nodes[1]
    data = lab.storage_dir(node2) / "data"
    image = lab.storage_dir(node2) / "small-data.ext4"
    filler = data / "filler"
    run(["truncate", "-s", "120M", str(image)])
    run(["mkfs.ext4", "-q", "-F", str(image)])
    agents.stop_agent(node2)
    run(["mount", "-o", "loop", str(image), str(data)])
    agents.start_agent(lab, node2)
    try:
        scenario.migrate_in_background(FLAG)
        scenario.wait_disk_copy()
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
        )  # until the filesystem is full
        scenario.wait_migration_command()
        assert scenario.migration is not None
        assert scenario.migration.returncode == 14, scenario.migration.stdout
        outcome = check(scenario)
        assert outcome["runs_on"] == ["node1"]
        assert outcome["tcp_survived"]
        outcome["error"] = scenario.migration.stderr.strip()[:160]
        report("destination data directory full during the disk copy", outcome)
    finally:
        filler.unlink(missing_ok=True)
        agents.stop_agent(node2)
        run(["umount", str(data)], check=False)
        image.unlink(missing_ok=True)
        agents.start_agent(lab, node2)


def test_kill_9_of_the_source_agent_during_the_disk_copy(scenario: Scenario) -> None:
    scenario.migrate_in_background(FLAG)
    scenario.wait_disk_copy()
    kill_agent(scenario, 0)
    agents.start_agent(scenario.lab, scenario.lab.nodes[0])
    scenario.wait_migration_command()
    outcome = check(scenario)
    assert outcome["runs_on"] == ["node1"]  # recovery: the copy never went on without it
    assert outcome["tcp_survived"]
    report("source agent killed during the disk copy, restarted", outcome)
