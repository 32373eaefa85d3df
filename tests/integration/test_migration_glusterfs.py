"""Live migration with the VM's data, config and system directories on a real GlusterFS
volume (served from the lab's storage namespace, mounted on every node's shared path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lab.image import GuestImage
from corral.lab.plan import LabPlan
from corral.storage.filesystem import mount_of
from corral.waiting import wait_for
from tests.integration.migration_helpers import CounterClient, migrate
from tests.integration.vm_helpers import console_lines, corral_json, corral_ok, guest_args
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cgfs", 2, storage="glusterfs") as plan:
        yield plan


def test_every_node_reports_its_vm_directories_on_glusterfs(lab: LabPlan) -> None:
    assert mount_of(lab.shared_dir).fstype == "fuse.glusterfs"
    ids = set()
    for node in lab.nodes:
        me = next(n for n in corral_json(node, "node", "list") if n["self"])
        storage = me["facts"]["storage"]
        assert {v["filesystem"] for v in storage.values()} == {"GlusterFS"}
        ids.add(tuple(storage[role]["id"] for role in ("data", "config", "system")))
    assert len(ids) == 1  # both nodes read the same identities: the storage is shared


def test_a_guest_on_glusterfs_migrates_there_and_back(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2 = lab.nodes
    ip = str(lab.guest_address(51).ip)
    corral_ok(
        node1,
        "vm",
        "create",
        "gfs",
        "--nic",
        "br0",
        *guest_args(guest_image, f"{ip}/24"),
        "--start",
    )
    disk = corral_json(node1, "vm", "show", "gfs")["spec"]["disks"][0]["path"]
    assert mount_of(Path(disk)).fstype == "fuse.glusterfs"
    wait_for(
        lambda: any(ln.startswith("DISKSEQ") for ln in console_lines(node1, "gfs")),
        timeout=120,
        what="disk writes on GlusterFS",
    )
    stream = CounterClient.connect(lab, ip)
    wait_for(lambda: len(stream.counters) >= 3, timeout=30, what="the counter stream")
    for source, target in ((node1, "node2"), (node2, "node1")):
        code, lines, err = migrate(source, "gfs", target)
        assert code == 0, err
        assert lines[-1]["tls"] is True
    seen = len(stream.counters)
    wait_for(lambda: len(stream.counters) > seen + 5, timeout=30, what="the stream to go on")
    assert not stream.closed
    assert stream.continuous
    stream.close()
    lines_now = console_lines(node1, "gfs")
    wait_for(
        lambda: (
            sum(ln.startswith("DISKSEQ") for ln in console_lines(node1, "gfs"))
            > sum(ln.startswith("DISKSEQ") for ln in lines_now)
        ),
        timeout=60,
        what="disk writes after the moves",
    )
    assert not [ln for ln in console_lines(node1, "gfs") if ln.startswith("DISKERR")]
    corral_ok(node1, "vm", "kill", "gfs")
    corral_ok(node1, "vm", "delete", "gfs")
