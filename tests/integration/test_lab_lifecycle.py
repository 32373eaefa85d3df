"""`lab up`, `lab status` and `lab down` on real network namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import commands
from corral.errors import ConflictError
from corral.lab import netns
from corral.lab.lifecycle import lab_down, lab_status, lab_up
from corral.lab.plan import LabConfig, LabPlan

pytestmark = pytest.mark.lab


@pytest.fixture
def lab_config(tmp_path: Path) -> Iterator[LabConfig]:
    cfg = LabConfig(nodes=3, prefix="ctest", root=tmp_path / "lab")
    yield cfg
    lab_down(cfg.root)  # whatever the test did, leave nothing behind


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, check=False
    )


def ping(plan: LabPlan, from_ns: str, address: str) -> bool:
    argv = netns.in_netns(from_ns, ["ping", "-n", "-q", "-c", "1", "-W", "2", address])
    return commands.run(argv, check=False).returncode == 0


def test_three_node_lab_up_status_down_through_the_cli(lab_config: LabConfig) -> None:
    root = str(lab_config.root)
    up = corral("lab", "up", "--nodes", "3", "--prefix", "ctest", "--root", root)
    assert up.returncode == 0, up.stderr
    status = corral("lab", "status", "--root", root, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["healthy"] is True
    assert [n["name"] for n in info["nodes"]] == ["node1", "node2", "node3"]
    assert all(link["present"] and link["up"] for link in info["links"])
    human = corral("lab", "status", "--root", root)
    assert "healthy" in human.stdout
    down = corral("lab", "down", "--root", root)
    assert down.returncode == 0, down.stderr
    assert not {"ctest-node1", "ctest-fabric", "ctest-client"} & netns.existing_namespaces()
    assert not lab_config.root.exists()


def test_nodes_reach_each_other_over_the_migration_network(lab_config: LabConfig) -> None:
    plan = lab_up(lab_config)
    n1, n2, n3 = plan.nodes
    assert ping(plan, n1.netns, str(n3.migration_address.ip))
    assert ping(plan, n3.netns, str(n2.migration_address.ip))


def test_migration_and_guest_networks_are_separate(lab_config: LabConfig) -> None:
    plan = lab_up(lab_config)
    # The client sits on the guest network only; node addresses are on the migration one.
    assert not ping(plan, plan.client_netns, str(plan.nodes[0].migration_address.ip))


def test_shared_and_local_directories_exist_while_up(lab_config: LabConfig) -> None:
    plan = lab_up(lab_config)
    assert plan.shared_dir.is_dir()
    assert all(node.local_dir.is_dir() for node in plan.nodes)


def test_up_twice_is_safe_and_changes_nothing(lab_config: LabConfig) -> None:
    plan = lab_up(lab_config)
    before = {ns: netns.pids_in(ns) for ns in plan.namespaces}
    messages: list[str] = []
    lab_up(lab_config, progress=messages.append)
    assert messages == ["lab already up"]
    assert lab_status(plan).healthy
    assert {ns: netns.pids_in(ns) for ns in plan.namespaces} == before


def test_up_repairs_a_lab_that_lost_a_namespace(lab_config: LabConfig) -> None:
    plan = lab_up(lab_config)
    commands.run(["ip", "netns", "del", plan.nodes[1].netns])
    assert not lab_status(plan).healthy
    lab_up(lab_config)
    assert lab_status(plan).healthy


def test_a_different_lab_under_the_same_root_is_refused(lab_config: LabConfig) -> None:
    lab_up(lab_config)
    other = LabConfig(nodes=2, prefix="ctest", root=lab_config.root)
    with pytest.raises(ConflictError, match="lab down"):
        lab_up(other)


def test_down_stops_processes_left_in_the_lab_and_removes_everything(
    lab_config: LabConfig,
) -> None:
    plan = lab_up(lab_config)
    leftover = subprocess.Popen(netns.in_netns(plan.nodes[0].netns, ["sleep", "600"]))
    try:
        assert leftover.pid in netns.pids_in(plan.nodes[0].netns)
        assert lab_down(lab_config.root)
        assert leftover.wait(timeout=10) == -9
    finally:
        if leftover.poll() is None:
            leftover.kill()
    assert not set(plan.namespaces) & netns.existing_namespaces()
    assert not lab_config.root.exists()
    assert not lab_down(lab_config.root)
