"""The lab plan: names, addresses and commands of a lab, computed without touching anything."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from corral.errors import UserInputError
from corral.lab.plan import LabConfig, down_commands, plan_lab, up_commands


def test_three_node_plan_has_one_namespace_per_node_plus_fabric_and_client() -> None:
    plan = plan_lab(LabConfig(nodes=3))
    assert plan.namespaces == (
        "corral-fabric",
        "corral-client",
        "corral-node1",
        "corral-node2",
        "corral-node3",
    )
    assert [n.name for n in plan.nodes] == ["node1", "node2", "node3"]


def test_node_addresses_are_distinct_and_inside_the_migration_network() -> None:
    cfg = LabConfig(nodes=50, migration_net=IPv4Network("10.99.0.0/24"))
    plan = plan_lab(cfg)
    addresses = [n.migration_address for n in plan.nodes]
    assert len(set(addresses)) == 50
    assert all(a.ip in cfg.migration_net and a.network == cfg.migration_net for a in addresses)
    assert str(plan.nodes[0].migration_address) == "10.99.0.1/24"


def test_client_and_guests_share_the_guest_network() -> None:
    plan = plan_lab(LabConfig())
    assert str(plan.client_address) == "10.211.0.254/24"
    assert str(plan.guest_address(10)) == "10.211.0.10/24"
    with pytest.raises(UserInputError, match="guest address"):
        plan.guest_address(254)


def test_every_interface_name_fits_the_kernel_limit() -> None:
    plan = plan_lab(LabConfig(nodes=50, prefix="a-rather-long-prefx"))
    for link in plan.links:
        assert len(link.fabric_end) <= 15
        assert len(link.far_end) <= 15


def test_each_node_has_a_migration_link_and_a_guest_uplink_in_its_bridge() -> None:
    plan = plan_lab(LabConfig(nodes=2))
    for node in plan.nodes:
        links = [ln for ln in plan.links if ln.netns == node.netns]
        assert {ln.fabric_bridge for ln in links} == {"mig", "guest"}
        uplink = next(ln for ln in links if ln.fabric_bridge == "guest")
        assert uplink.far_bridge == node.bridge
        assert uplink.address is None
        mig = next(ln for ln in links if ln.fabric_bridge == "mig")
        assert mig.address == node.migration_address


def test_every_command_acts_inside_a_lab_namespace_never_the_host() -> None:
    plan = plan_lab(LabConfig(nodes=3))
    for argv in up_commands(plan):
        assert argv[0] == "ip"
        if argv[1] == "netns":
            assert argv[2] == "add"
            assert argv[3] in plan.namespaces
        else:
            assert argv[1] == "-n"
            assert argv[2] in plan.namespaces
            if "netns" in argv:  # a veth peer is moved into a lab namespace
                assert argv[argv.index("netns") + 1] in plan.namespaces


def test_addresses_are_added_only_in_node_and_client_namespaces() -> None:
    plan = plan_lab(LabConfig(nodes=2))
    adds = [argv for argv in up_commands(plan) if argv[3:5] == ["addr", "add"]]
    assert sorted(argv[2] for argv in adds) == ["corral-client", "corral-node1", "corral-node2"]


def test_down_removes_only_namespaces_that_exist() -> None:
    plan = plan_lab(LabConfig(nodes=2))
    cmds = down_commands(plan, {"corral-node1", "unrelated"})
    assert cmds == [["ip", "netns", "del", "corral-node1"]]


def test_prefix_renames_every_namespace() -> None:
    plan = plan_lab(LabConfig(nodes=1, prefix="ctest"))
    assert all(ns.startswith("ctest-") for ns in plan.namespaces)


def test_directories_live_under_the_root() -> None:
    plan = plan_lab(LabConfig(nodes=2, root=Path("/srv/lab")))
    assert plan.shared_dir == Path("/srv/lab/shared")
    assert plan.node("node2").local_dir == Path("/srv/lab/nodes/node2")
    assert all(str(d).startswith("/srv/lab") for d in plan.directories)


def test_local_storage_gives_each_node_its_own_vm_directories() -> None:
    shared = plan_lab(LabConfig(nodes=2, root=Path("/srv/lab")))
    assert {shared.storage_dir(n) for n in shared.nodes} == {Path("/srv/lab/shared")}
    local = plan_lab(LabConfig(nodes=2, root=Path("/srv/lab"), storage="local"))
    assert [local.storage_dir(n) for n in local.nodes] == [
        Path("/srv/lab/nodes/node1/storage"),
        Path("/srv/lab/nodes/node2/storage"),
    ]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (LabConfig(nodes=0), "nodes"),
        (LabConfig(nodes=51), "nodes"),
        (LabConfig(prefix="bad/name"), "prefix"),
        (LabConfig(prefix="x" * 21), "prefix"),
        (LabConfig(guest_net=IPv4Network("10.210.0.0/16")), "guest-net"),
        (LabConfig(migration_net=IPv4Network("10.1.0.0/28")), "migration-net"),
        (LabConfig(root=Path("relative")), "root"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(config: LabConfig, field: str) -> None:
    with pytest.raises(UserInputError) as info:
        plan_lab(config)
    assert info.value.field == field


def test_unknown_node_is_refused_listing_the_known_ones() -> None:
    plan = plan_lab(LabConfig(nodes=2))
    with pytest.raises(UserInputError, match="node1, node2"):
        plan.node("node9")
    assert plan.node("corral-node2").name == "node2"


def test_config_survives_its_json_round_trip() -> None:
    cfg = LabConfig(nodes=4, prefix="x", root=Path("/r"), migration_net=IPv4Network("10.5.0.0/24"))
    assert LabConfig.from_json(cfg.to_json()) == cfg


def test_glusterfs_storage_adds_a_storage_namespace_on_the_migration_network() -> None:
    plan = plan_lab(LabConfig(nodes=2, storage="glusterfs"))
    assert plan.storage_netns == "corral-storage"
    assert "corral-storage" in plan.namespaces
    assert str(plan.storage_address) == "10.210.0.250/24"
    link = next(ln for ln in plan.links if ln.netns == "corral-storage")
    assert link.fabric_bridge == "mig"
    assert plan_lab(LabConfig(nodes=2)).storage_netns == ""


def test_unknown_storage_is_refused() -> None:
    with pytest.raises(UserInputError) as info:
        plan_lab(LabConfig(storage="nfs"))
    assert info.value.field == "storage"


def test_etcd_state_adds_three_etcd_namespaces_on_the_migration_network() -> None:
    plan = plan_lab(LabConfig(nodes=2, state="etcd", root=Path("/r")))
    assert [ns for ns, _ in plan.etcd] == ["corral-etcd1", "corral-etcd2", "corral-etcd3"]
    assert set(plan.namespaces) >= {"corral-etcd1", "corral-etcd2", "corral-etcd3"}
    assert plan.etcd_endpoints == [f"https://10.210.0.{h}:2379" for h in (241, 242, 243)]
    for ns, address in plan.etcd:
        link = next(ln for ln in plan.links if ln.netns == ns)
        assert (link.fabric_bridge, link.address) == ("mig", address)
    assert Path("/r/etcd") in plan.directories
    assert plan_lab(LabConfig(nodes=2)).etcd == ()  # gossip: no etcd at all
    cfg = LabConfig(nodes=2, state="etcd")
    assert LabConfig.from_json(cfg.to_json()) == cfg


def test_an_unknown_state_is_refused_naming_it() -> None:
    with pytest.raises(UserInputError) as info:
        plan_lab(LabConfig(state="zookeeper"))
    assert info.value.field == "state"
