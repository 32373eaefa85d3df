"""The whole cluster in one view, on a 3-node lab with real agents: `vm list` from any node
lists every member's VMs with their node, `vm show` finds a VM wherever it is, `--node`
narrows to one node, and the VMs of a member that does not answer are shown as unknown
(with a warning), never hidden."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from corral.lab import agents
from corral.lab.image import GuestImage
from corral.lab.plan import LabPlan
from tests.integration.vm_helpers import corral, corral_json, corral_ok, guest_args
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, guest_image: GuestImage) -> Iterator[LabPlan]:
    """Three members; node1 owns web1 and web2, node2 owns db1 (all defined, stopped)."""
    with running_cluster(tmp_path_factory, "cview", 3) as plan:
        node1, node2, _ = plan.nodes
        for owner, name in ((node1, "web1"), (node1, "web2"), (node2, "db1")):
            corral_ok(owner, "vm", "create", name, "--memory", "64", *guest_args(guest_image))
        yield plan


def listed(out: list[dict[str, object]]) -> dict[str, tuple[object, object]]:
    return {str(vm["name"]): (vm["node"], vm["observed"]) for vm in out}


def test_every_node_lists_every_vm_with_its_node(lab: LabPlan) -> None:
    for node in lab.nodes:
        found = listed(corral_json(node, "vm", "list"))
        assert found == {
            "db1": ("node2", "stopped"),
            "web1": ("node1", "stopped"),
            "web2": ("node1", "stopped"),
        }
    text = corral(lab.nodes[2], "vm", "list")
    assert text.returncode == 0
    assert "db1" in text.stdout
    assert "node2" in text.stdout


def test_node_narrows_the_list_to_one_node(lab: LabPlan) -> None:
    node1 = lab.nodes[0]
    assert set(listed(corral_json(node1, "vm", "list", "--node", "node1"))) == {"web1", "web2"}


def test_show_finds_a_vm_on_whichever_node_owns_it(lab: LabPlan) -> None:
    node3 = lab.nodes[2]
    shown = corral_json(node3, "vm", "show", "db1")
    assert shown["owner"] == "node2"
    assert shown["events"]  # the owner's full record, its history too
    missing = corral(node3, "vm", "show", "nope")
    assert missing.returncode != 0
    assert "no node of the cluster owns a VM named 'nope'" in missing.stderr


def test_a_member_that_does_not_answer_has_its_vms_shown_as_unknown(lab: LabPlan) -> None:
    node1, node2, node3 = lab.nodes
    corral_json(node3, "vm", "list")  # node3 has seen node2's VMs
    agents.stop_agent(node2)
    try:
        out = corral(node3, "vm", "list", "--json")
        assert out.returncode == 0, out.stderr
        found = listed(json.loads(out.stdout))
        assert found["db1"] == ("node2", "unknown")  # as last seen, not hidden
        assert found["web1"] == ("node1", "stopped")
        assert "node2 did not answer" in out.stderr
        # An agent that never saw node2's VMs says how many it had at its last heartbeat.
        agents.stop_agent(node1)
        agents.start_agent(lab, node1)
        fresh = corral(node1, "vm", "list")
        assert fresh.returncode == 0, fresh.stderr
        assert "node2 did not answer" in fresh.stderr
        assert "it had 1 VM(s) at its last heartbeat" in fresh.stderr
    finally:
        agents.start_agent(lab, node2)


def test_create_with_node_auto_places_the_vm_on_a_member_that_can_take_it(
    lab: LabPlan,
) -> None:
    node3 = lab.nodes[2]
    out = corral(node3, "vm", "create", "placed", "--memory", "64", "--disk", "8", "--node", "auto")
    assert out.returncode == 0, out.stderr
    chosen = out.stderr.split("placing placed on ")[1].split()[0]
    assert chosen in ("node1", "node2", "node3")
    found = listed(corral_json(node3, "vm", "list"))
    assert found["placed"] == (chosen, "stopped")
    corral_ok(lab.node(chosen), "vm", "delete", "placed")
