"""VMs through real agents and real QEMU (TCG) in a two-node lab: lifecycle, CPU topology,
checkpoints, agent restarts, VMs killed behind the agent's back, and bad specs."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.commands import pid_alive, run
from corral.lab import agents, netns
from corral.lab.guest import Counter
from corral.lab.image import GuestImage
from corral.lab.plan import LabPlan
from corral.waiting import wait_for
from tests.integration.vm_helpers import (
    console_lines,
    corral,
    corral_json,
    corral_ok,
    counters,
    guest_args,
    last_counter,
)
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]
IP = "10.211.0.31"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cvm", 2) as plan:
        yield plan


@pytest.fixture(scope="module")
def vm(lab: LabPlan, guest_image: GuestImage) -> str:
    """A running test guest on node1 with 2 sockets x 2 cores x 1 thread and a disk."""
    node1 = lab.nodes[0]
    corral_ok(
        node1,
        "vm",
        "create",
        "life",
        "--memory",
        "256",
        "--sockets",
        "2",
        "--cores",
        "2",
        "--threads",
        "1",
        "--nic",
        "br0",
        *guest_args(guest_image, f"{IP}/24"),
        "--start",
    )
    wait_for(
        lambda: any("BOOTED" in ln for ln in console_lines(node1, "life")),
        timeout=120,
        what="the guest to boot",
    )
    return "life"


def ping(lab: LabPlan, count: int = 1) -> bool:
    argv = netns.in_netns(lab.client_netns, ["ping", "-n", "-q", "-c", str(count), "-W", "1", IP])
    return run(argv, check=False).returncode == 0


def test_a_started_vm_runs_answers_ping_and_counts(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    info = corral_json(node1, "vm", "show", vm)
    assert (info["state"], info["observed"], info["owner"]) == ("running", "running", "node1")
    assert pid_alive(info["pid"])
    wait_for(lambda: ping(lab), timeout=60, what="ping")
    first = last_counter(node1, vm)
    assert first is not None
    wait_for(
        lambda: (c := last_counter(node1, vm)) is not None and c.seq > first.seq + 5,
        timeout=30,
        what="the counter to advance",
    )


def test_the_guest_sees_the_topology_it_was_given(lab: LabPlan, vm: str) -> None:
    lines = console_lines(lab.nodes[0], vm)
    topology = next(ln for ln in lines if ln.startswith("TOPOLOGY"))
    assert topology == "TOPOLOGY cpus=4 sockets=2 cores_per_socket=2 threads_per_core=1"


def test_pause_freezes_the_guest_and_resume_thaws_it(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    wait_for(lambda: ping(lab), timeout=60, what="ping")
    assert corral_json(node1, "vm", "pause", vm)["observed"] == "paused"
    before = len(console_lines(node1, vm))
    assert not ping(lab, count=2)  # a paused guest answers nothing (2 s of pings)
    assert len(console_lines(node1, vm)) == before
    assert corral_json(node1, "vm", "resume", vm)["observed"] == "running"
    wait_for(lambda: ping(lab), timeout=30, what="ping after resume")


def test_checkpoint_then_restore_continues_from_the_checkpoint(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    wait_for(
        lambda: any(ln.startswith("DISKSEQ") for ln in console_lines(node1, vm)),
        timeout=60,
        what="disk writes",
    )
    before = last_counter(node1, vm)
    corral_ok(node1, "checkpoint", "create", vm, "--name", "c1")
    saved = last_counter(node1, vm)
    assert before is not None
    assert saved is not None
    [info] = corral_json(node1, "checkpoint", "list", vm)
    assert info["name"] == "c1"
    assert info["size_bytes"] > 0
    assert info["hypervisor_version"].startswith("7.")
    # Let the guest move well past the checkpoint, then go back to it.
    wait_for(
        lambda: (c := last_counter(node1, vm)) is not None and c.seq > saved.seq + 30,
        timeout=60,
        what="the counter to move on",
    )
    mark = len(console_lines(node1, vm))
    corral_ok(node1, "checkpoint", "restore", vm, "c1")

    # The guest printed on until the restore; the restored one starts again below that.
    def restored() -> list[Counter] | None:
        seen = counters(console_lines(node1, vm)[mark:])
        for i in range(1, len(seen)):
            if seen[i].seq < seen[i - 1].seq:
                return seen[i:] if len(seen) - i >= 5 else None
        return None

    resumed = wait_for(restored, timeout=60, what="counter lines after the restore")
    after = console_lines(node1, vm)[mark:]
    assert not any("BOOTED" in ln for ln in after)  # no reboot
    # The counter continues from where the checkpoint was taken, not from 1, not from later.
    # The checkpoint was taken between `before` and `saved`.
    assert before.seq <= resumed[0].seq <= saved.seq + 1, (before, saved, resumed[0])
    assert resumed[0].uptime < saved.uptime + 1.0
    wait_for(
        lambda: sum(ln.startswith("DISKSEQ") for ln in console_lines(node1, vm)[mark:]) >= 2,
        timeout=60,
        what="disk writes after the restore",
    )
    assert not [ln for ln in console_lines(node1, vm) if ln.startswith("DISKERR")]
    assert ping(lab, count=2)  # same MAC and address: the client reaches it as before
    events = [e["reason"] for e in corral_json(node1, "vm", "show", vm)["events"]]
    assert "checkpoint c1 saved" in events
    assert "restored from checkpoint c1" in events


def test_restore_refuses_a_checkpoint_of_another_spec_or_qemu(
    lab: LabPlan, vm: str, guest_image: GuestImage
) -> None:
    node1 = lab.nodes[0]
    corral_ok(node1, "vm", "create", "other", "--memory", "128", *guest_args(guest_image))
    system = lab.shared_dir / "system"
    (system / "other" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(system / vm / "checkpoints" / "c1", system / "other" / "checkpoints" / "c1")
    out = corral(node1, "checkpoint", "restore", "other", "c1")
    assert out.returncode != 0
    assert "made for another spec of other" in out.stderr
    meta = system / vm / "checkpoints" / "c1" / "meta.json"
    original = meta.read_text()
    meta.write_text(json.dumps({**json.loads(original), "hypervisor_version": "6.2.0"}))
    try:
        out = corral(node1, "checkpoint", "restore", vm, "c1")
        assert out.returncode != 0
        assert "made by QEMU 6.2.0" in out.stderr
    finally:
        meta.write_text(original)
    assert corral_json(node1, "vm", "show", vm)["observed"] == "running"  # untouched
    shutil.rmtree(system / "other" / "checkpoints" / "c1")
    corral_ok(node1, "vm", "delete", "other")


def test_kill_9_of_the_agent_leaves_the_vm_running(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    qemu_pid = corral_json(node1, "vm", "show", vm)["pid"]
    agent_pid = agents.agent_pid(node1)
    assert agent_pid is not None
    os.kill(agent_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(agent_pid), timeout=10, what="the agent to die")
    assert pid_alive(qemu_pid)
    assert ping(lab)
    agents.start_agent(lab, node1)
    info = corral_json(node1, "vm", "show", vm)
    assert (info["state"], info["observed"], info["pid"]) == ("running", "running", qemu_pid)
    before = last_counter(node1, vm)
    assert before is not None
    wait_for(
        lambda: (c := last_counter(node1, vm)) is not None and c.seq > before.seq,
        timeout=30,
        what="the counter to go on",
    )


def test_suspend_checkpoint_stops_the_vm_and_restore_brings_it_back(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    corral_ok(node1, "checkpoint", "create", vm, "--name", "s1", "--suspend")
    info = corral_json(node1, "vm", "show", vm)
    assert (info["state"], info["observed"]) == ("stopped", "stopped")
    corral_ok(node1, "checkpoint", "restore", vm, "s1")
    assert corral_json(node1, "vm", "show", vm)["observed"] == "running"
    wait_for(lambda: ping(lab), timeout=30, what="ping after the restore")
    corral_ok(node1, "checkpoint", "delete", vm, "s1")
    assert [c["name"] for c in corral_json(node1, "checkpoint", "list", vm)] == ["c1"]


def test_a_vm_killed_behind_the_agents_back_is_reported_stopped(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    qemu_pid = corral_json(node1, "vm", "show", vm)["pid"]
    os.kill(qemu_pid, signal.SIGKILL)
    wait_for(
        lambda: corral_json(node1, "vm", "show", vm)["observed"] == "stopped",
        timeout=20,
        what="the VM to be seen stopped",
    )
    recorded = wait_for(
        lambda: (i := corral_json(node1, "vm", "show", vm))["state"] == "stopped" and i,
        timeout=20,
        what="the record to follow",
    )
    assert "died or was killed outside corral" in recorded["events"][-1]["reason"]
    listed = {v["name"]: v for v in corral_json(node1, "vm", "list")}
    assert listed[vm]["observed"] == "stopped"


def test_stop_powers_off_or_forces_and_delete_removes_everything(lab: LabPlan, vm: str) -> None:
    node1 = lab.nodes[0]
    corral_ok(node1, "vm", "start", vm)
    assert corral_json(node1, "vm", "show", vm)["observed"] == "running"
    out = corral(node1, "vm", "delete", vm)
    assert out.returncode == 4
    assert "stop or kill it first" in out.stderr
    corral_ok(node1, "vm", "stop", vm, "--timeout", "2")
    info = corral_json(node1, "vm", "show", vm)
    assert (info["state"], info["observed"]) == ("stopped", "stopped")
    disk = Path(info["spec"]["disks"][0]["path"])
    assert disk.exists()
    corral_ok(node1, "vm", "delete", vm)
    assert not disk.exists()
    assert vm not in {v["name"] for v in corral_json(node1, "vm", "list")}
    assert corral(node1, "vm", "show", vm).returncode == 3


def test_node_option_creates_and_runs_a_vm_on_another_node(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2 = lab.nodes
    # Another node may not name node2's host files (a kernel, an image): only new disks.
    refused = corral(node1, "vm", "create", "far", "--node", "node2", *guest_args(guest_image))
    assert refused.returncode == 9
    assert "boot.kernel: a VM created from another node may not name host files" in refused.stderr
    assert corral(node2, "vm", "show", "far").returncode == 3
    corral_ok(node1, "vm", "create", "far", "--node", "node2", "--disk", "8", "--start")
    assert corral_json(node2, "vm", "show", "far")["owner"] == "node2"
    assert corral_json(node2, "vm", "show", "far")["observed"] == "running"
    assert "far" not in {v["name"] for v in corral_json(node1, "vm", "list", "--node", "node1")}
    everywhere = {v["name"]: v["node"] for v in corral_json(node1, "vm", "list")}
    assert everywhere["far"] == "node2"  # the cluster view shows it, on its node
    out = corral(node1, "vm", "create", "far", *guest_args(guest_image))
    assert out.returncode == 4
    assert "already exists on node2" in out.stderr
    corral_ok(node1, "vm", "kill", "far", "--node", "node2")
    corral_ok(node1, "vm", "delete", "far", "--node", "node2")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--cpus", "3", "--sockets", "2", "--cores", "2"], "cpu"),
        (["--nic", "nosuchbr"], "nics[0].bridge"),
        (["--memory", "0"], "memory_mib"),
        (["--cpu-model", "host"], "cpu.model"),
        (["--cpu-model", "NoSuchCPU"], "cpu.model"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(
    lab: LabPlan, guest_image: GuestImage, args: list[str], field: str
) -> None:
    node1 = lab.nodes[0]
    before = sorted((lab.shared_dir / "data").rglob("*"))
    out = corral(node1, "vm", "create", "bad", *args, *guest_args(guest_image))
    assert out.returncode == 2, out.stderr
    assert field in out.stderr
    assert "Traceback" not in out.stderr
    assert "bad" not in {v["name"] for v in corral_json(node1, "vm", "list")}
    assert sorted((lab.shared_dir / "data").rglob("*")) == before  # no disk left behind


@pytest.mark.parametrize("name", ["../x", "a/b", "x" * 300, "ünïcode", "has space"])
def test_bad_names_are_refused(lab: LabPlan, name: str) -> None:
    config = lab.shared_dir / "config"
    before = sorted(config.iterdir())
    out = corral(lab.nodes[0], "vm", "create", name, "--memory", "64")
    assert out.returncode == 2
    assert "name" in out.stderr
    assert sorted(config.iterdir()) == before


def test_a_spec_file_that_is_not_toml_is_refused(lab: LabPlan, tmp_path: Path) -> None:
    spec = tmp_path / "vm.toml"
    spec.write_text("name = [unclosed\n")
    out = corral(lab.nodes[0], "vm", "create", "--spec", str(spec))
    assert out.returncode == 2
    assert "not valid TOML" in out.stderr
