"""A lab with local storage (`corral lab up --storage local`): each node has its own data,
config and system directories with their own identities, so a VM's disks are the node's
own; a migration to another node is refused by preflight, naming every directory that is
not shared (copying local disks is issue 15's next step)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lab.image import GuestImage
from corral.lab.plan import LabPlan
from tests.integration.vm_helpers import corral, corral_json, corral_ok, guest_args
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


def test_a_vm_with_a_local_disk_is_refused_naming_each_unshared_directory(
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
    assert corral(node1, "vm", "delete", "loc").returncode == 0
    assert not Path(disk).exists()  # its disk went with it
