"""A lab with local storage (`corral lab up --storage local`): each node has its own data,
config and system directories with their own identities, so a VM's disks are the node's
own. Without --with-local-disks a migration is refused, naming the flag and the bytes; with
it a running guest moves with its disk (copied while it writes a pattern across it, every
block read back on the target), its config and its network connections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lab.image import GuestImage
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.migration_helpers import CounterClient, migrate
from tests.integration.vm_helpers import (
    console_lines,
    corral,
    corral_json,
    corral_ok,
    guest_args,
)
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cloc", 2, storage="local") as plan:
        yield plan


def test_each_node_has_its_own_vm_directories_and_identities(lab: LabPlan) -> None:
    seen = {}
    for node in lab.nodes:
        me = next(n for n in corral_json(node, "node", "list") if n["self"])
        storage = me["facts"]["storage"]
        for role in ("data", "config", "system"):
            assert storage[role]["path"] == str(lab.storage_dir(node) / role)
        seen[node.name] = {storage[role]["id"] for role in ("data", "config", "system")}
    node1, node2 = (seen[n.name] for n in lab.nodes)
    assert len(node1) == len(node2) == 3
    assert not node1 & node2  # no identity in common: nothing is shared


def test_a_vm_with_a_local_disk_is_refused_naming_the_flag_and_the_bytes(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2 = lab.nodes
    corral_ok(node1, "vm", "create", "loc", *guest_args(guest_image))
    disk = corral_json(node1, "vm", "show", "loc")["spec"]["disks"][0]["path"]
    assert disk.startswith(str(lab.storage_dir(node1) / "data"))  # the node's own
    out = corral(node1, "migrate", "loc", node2.name, "--plan", "--json")
    assert out.returncode == 4, out.stderr
    plan = json.loads(out.stdout)
    assert not plan["allowed"]
    unshared = [r["message"] for r in plan["reasons"] if r["code"] == "storage-not-shared"]
    for role in ("data", "config", "system"):
        assert any(f"the {role} directory is not shared" in m for m in unshared), unshared
    [local] = [r["message"] for r in plan["reasons"] if r["code"] == "local-disks"]
    assert "--with-local-disks" in local, local
    assert "of 32.0 MiB to copy" in local, local
    assert corral(node1, "vm", "delete", "loc").returncode == 0
    assert not Path(disk).exists()  # its disk went with it


def pattern_lines(node: LabNode, vm: str) -> list[str]:
    return [
        ln
        for ln in console_lines(node, vm)
        if ln.startswith(("PATPASS", "PATERR", "DISKERR", "DISKSEQ"))
    ]


def passes(node: LabNode, vm: str) -> int:
    return sum(ln.startswith("PATPASS") for ln in pattern_lines(node, vm))


@pytest.fixture(scope="module")
def mover(lab: LabPlan, guest_image: GuestImage) -> str:
    """A running guest on node1 whose disk is node1's own, writing a pattern across it."""
    node1 = lab.nodes[0]
    ip = str(lab.guest_address(61).ip)
    corral_ok(
        node1,
        "vm",
        "create",
        "mover",
        "--nic",
        "br0",
        *guest_args(guest_image, f"{ip}/24", pattern=True),
        "--start",
    )
    wait_for(lambda: passes(node1, "mover") >= 1, timeout=180, what="a first pattern pass")
    return ip


def test_a_running_vm_moves_with_its_local_disk_and_every_block_arrives(
    lab: LabPlan, mover: str
) -> None:
    node1, node2 = lab.nodes
    before = corral_json(node1, "vm", "show", "mover")["spec"]["disks"][0]["path"]
    stream = CounterClient.connect(lab, mover)
    wait_for(lambda: len(stream.counters) >= 3, timeout=30, what="the counter stream")
    code, lines, err = migrate(node1, "mover", node2.name, "--with-local-disks")
    assert code == 0, err
    phases = [ln.get("phase") for ln in lines if ln["event"] == "progress"]
    assert "disks" in phases
    assert "transfer" in phases
    assert phases.index("disks") < phases.index("transfer")  # the disks first, then RAM
    copying = [ln for ln in lines if ln.get("phase") == "disks"]
    assert copying[-1]["ready"]
    assert copying[-1]["done"] == copying[-1]["total"] >= 32 << 20  # and what it wrote meanwhile
    summary = lines[-1]
    assert summary["event"] == "done"
    assert summary["disks"]["copied"] == 1
    assert summary["disks"]["virtual_bytes"] == 32 << 20
    assert 0 < summary["disks"]["data_bytes"] < 32 << 20  # only what the guest wrote
    # The VM, its disk and its config are node2's now; node1 keeps nothing of it.
    shown = corral_json(node2, "vm", "show", "mover")
    assert shown["owner"] == node2.name
    assert shown["observed"] == "running"
    after = Path(shown["spec"]["disks"][0]["path"])
    assert after == lab.storage_dir(node2) / "data" / "mover" / "disk0.qcow2"
    assert after.exists()
    assert not Path(before).exists()
    assert (lab.storage_dir(node2) / "config" / "mover.json").exists()
    assert not (lab.storage_dir(node1) / "config" / "mover.json").exists()
    assert corral(node1, "vm", "show", "mover", "--node", node1.name).returncode != 0
    # The guest goes on: its TCP stream never broke, and two full passes on node2 read back
    # every block it wrote, partly on node1 before and during the copy.
    seen = len(stream.counters)
    wait_for(lambda: len(stream.counters) > seen + 5, timeout=30, what="the stream to go on")
    assert not stream.closed
    assert stream.continuous
    stream.close()
    wait_for(lambda: passes(node2, "mover") >= 2, timeout=180, what="two passes on node2")
    found = pattern_lines(node2, "mover")
    assert not [ln for ln in found if ln.startswith(("PATERR", "DISKERR"))], found


def test_it_moves_back_keeping_the_source_image_once_its_checkpoint_may_go(
    lab: LabPlan, mover: str
) -> None:
    node1, node2 = lab.nodes
    image = Path(corral_json(node2, "vm", "show", "mover")["spec"]["disks"][0]["path"])
    corral_ok(node2, "checkpoint", "create", "mover", "--name", "c1")
    code, lines, err = migrate(node2, "mover", node1.name, "--with-local-disks")
    assert code == 4, err
    assert "[checkpoints]" in err
    assert "c1" in err
    assert "--drop-checkpoints" in err
    flags = ("--with-local-disks", "--keep-source-disks", "--drop-checkpoints")
    code, lines, err = migrate(node2, "mover", node1.name, *flags)
    assert code == 0, err
    assert lines[-1]["disks"]["source_images_kept"] is True
    assert image.exists()  # kept, as asked
    assert not (lab.storage_dir(node2) / "system" / "mover" / "checkpoints").exists()
    shown = corral_json(node1, "vm", "show", "mover")
    assert shown["owner"] == node1.name
    assert shown["observed"] == "running"
    assert corral_json(node1, "checkpoint", "list", "mover") == []
    mark = passes(node1, "mover")
    wait_for(lambda: passes(node1, "mover") >= mark + 2, timeout=180, what="two more passes")
    found = pattern_lines(node1, "mover")
    assert not [ln for ln in found if ln.startswith(("PATERR", "DISKERR"))], found
