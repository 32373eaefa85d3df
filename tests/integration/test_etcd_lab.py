"""`--state etcd` on a 2-node lab with a real 3-member etcd cluster (Debian's etcd-server) in
the lab's own namespaces, TLS from the cluster CA, real agents and real QEMU guests:
membership from leases, a migration whose handoff is a compare-and-swap of the VM's
ownership key, and the faults: one etcd member killed, etcd's majority lost mid-migration,
a node cut off from etcd, a node removed. Every outcome is checked as in the fault suite:
the VM runs on exactly one node and the records tell the truth."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral import unix_http
from corral.commands import run
from corral.errors import CommandFailed
from corral.lab import agents, etcd, netns
from corral.lab.image import GuestImage
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.vm_helpers import console_lines, corral, corral_json, corral_ok, guest_args
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]

READ_KEYS = """
import json, sys
from pathlib import Path
from corral.agent.etcd_membership import open_store
from corral.cluster.etcd_store import parse_endpoints
from corral.cluster.pki import PkiPaths
store = open_store(parse_endpoints(sys.argv[1]), PkiPaths(Path(sys.argv[2])), 2.0)
if sys.argv[3] == "--leader":  # the client URL of etcd's leader now
    for url in sys.argv[1].split(","):
        one = open_store(parse_endpoints(url), PkiPaths(Path(sys.argv[2])), 2.0)
        status = one.call("/maintenance/status", {})
        if status["header"]["member_id"] == status["leader"]:
            print(json.dumps({"leader": url}))
            sys.exit(0)
    sys.exit("no leader")
if len(sys.argv) == 5:  # KEY VALUE: write it (keeping its lease), as an operator could
    entry = store.get(sys.argv[3])
    store.put(sys.argv[3], sys.argv[4], entry.lease if entry else None)
_, entries = store.get_prefix(sys.argv[3])
print(json.dumps({e.key.split("/", 3)[3]: e.value for e in entries}))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cetd", 2, state="etcd") as plan:
        yield plan


def keys(lab: LabPlan, prefix: str, *value: str, node: LabNode | None = None) -> dict[str, str]:
    """etcd's keys under `prefix`, read as `node` (node1) reads them: its namespace, its
    certificate. With a value: `prefix` is a key, written first."""
    node = node or lab.nodes[0]
    argv = [
        sys.executable,
        "-c",
        READ_KEYS,
        ",".join(lab.etcd_endpoints),
        str(node.local_dir / "state" / "pki"),
        prefix,
        *value,
    ]
    return dict(json.loads(run(netns.in_netns(node.netns, argv), timeout=30).stdout))


def online(node: LabNode) -> dict[str, bool]:
    return {n["name"]: n["online"] for n in corral_json(node, "node", "list")}


def state_of(node: LabNode) -> dict[str, Any]:
    return dict(corral_json(node, "cluster", "status")["state"])


def boot(lab: LabPlan, image: GuestImage, node: LabNode, name: str) -> None:
    corral_ok(node, "vm", "create", name, "--memory", "128", *guest_args(image), "--start")
    wait_for(
        lambda: any("BOOTED" in ln for ln in console_lines(node, name)),
        timeout=120,
        what=f"{name} to boot",
    )


def observed(node: LabNode, vm: str) -> str:
    with agents.client(node) as c:
        return str(c.get(f"/runtime/{vm}")["observed"])


def runs_on(lab: LabPlan, vm: str) -> list[str]:
    return [n.name for n in lab.nodes if observed(n, vm) not in ("stopped",)]


def members(lab: LabPlan) -> list[etcd.EtcdMember]:
    return etcd.lab_members(lab)


def restart_etcd(lab: LabPlan, *which: etcd.EtcdMember) -> None:
    everyone = members(lab)
    for member in which:
        etcd.start(member, everyone, lab.config.prefix)
    for member in everyone:
        wait_for(
            lambda m=member: etcd.healthy(m, m.folder / "member.pem", m.folder / "member.key"),  # type: ignore[misc]
            timeout=60,
            what=f"etcd {member.name} to be healthy again",
        )
    for node in lab.nodes:
        wait_for(
            lambda n=node: state_of(n)["reachable"] and state_of(n)["lease_alive"],  # type: ignore[misc]
            timeout=30,
            what=f"{node.name} to reach etcd again",
        )


def migrating(
    node: LabNode, vm: str, target: str, bandwidth: int
) -> tuple[threading.Thread, dict[str, subprocess.CompletedProcess[str]]]:
    """`corral migrate` throttled, in the background, returned once its transfer has sent
    something: the thread, and where its outcome will be."""
    holder: dict[str, subprocess.CompletedProcess[str]] = {}

    def background() -> None:
        holder["out"] = corral(node, "migrate", vm, target, "--bandwidth", str(bandwidth), "--json")

    thread = threading.Thread(target=background)
    thread.start()

    def transferring() -> bool:
        tasks = corral_json(node, "task", "list")
        send = [t for t in tasks if t["kind"] == "migration.send" and t["state"] == "running"]
        return bool(send) and send[0]["progress"].get("done", 0) > 0

    wait_for(transferring, timeout=60, what="the transfer to start")
    return thread, holder


def test_membership_and_vm_ownership_live_in_etcd(lab: LabPlan, guest_image: GuestImage) -> None:
    node1 = lab.nodes[0]
    for node in lab.nodes:
        state = state_of(node)
        assert state["mode"] == "etcd"
        assert state["reachable"]
        assert state["lease_alive"]
        assert state["endpoints"] == lab.etcd_endpoints
    assert online(node1) == {"node1": True, "node2": True}
    assert set(keys(lab, "members/")) == {"members/node1", "members/node2"}
    scraped = unix_http.request(
        agents.agent_socket(node1), "GET", "/metrics", body=None, headers={}, timeout=30
    ).body.decode()
    assert "corral_etcd_reachable 1.0" in scraped
    assert "corral_etcd_lease_alive 1.0" in scraped
    facts = json.loads(keys(lab, "facts/")["facts/node2"])
    assert facts["hypervisor"] == "qemu"
    boot(lab, guest_image, node1, "e1")
    wait_for(lambda: keys(lab, "vms/").get("vms/e1") == "node1", timeout=10, what="e1's key")


def test_a_migration_hands_the_ownership_key_over(lab: LabPlan) -> None:
    node1, node2 = lab.nodes
    out = corral(node1, "migrate", "e1", "node2", "--json")
    assert out.returncode == 0, out.stderr
    assert keys(lab, "vms/")["vms/e1"] == "node2"
    assert runs_on(lab, "e1") == ["node2"]
    receive = next(
        t for t in corral_json(node2, "task", "list") if t["kind"] == "migration.receive"
    )
    log = corral_ok(node2, "task", "logs", receive["id"])
    assert "etcd: e1 is now owned by node2" in log
    # Another node may not start or resume what etcd says node2 owns.
    assert corral_json(node2, "vm", "show", "e1")["owner"] == "node2"


def test_one_etcd_member_killed_changes_nothing(lab: LabPlan) -> None:
    node1, node2 = lab.nodes
    url = keys(lab, "--leader")["leader"]  # the leader: the hardest one to lose
    first = next(m for m in members(lab) if m.client_url == url)
    etcd.stop(first)
    try:
        out = corral(node2, "migrate", "e1", "node1", "--json")
        assert out.returncode == 0, out.stderr
        assert keys(lab, "vms/")["vms/e1"] == "node1"
        assert runs_on(lab, "e1") == ["node1"]
        # Over more than a lease's time, no node was shown offline and etcd stayed usable.
        deadline = time.monotonic() + agents.OFFLINE_AFTER + 2
        while time.monotonic() < deadline:
            assert online(node1) == {"node1": True, "node2": True}
            assert state_of(node2)["reachable"]
            assert state_of(node1)["lease_alive"]
    finally:
        restart_etcd(lab, first)


def test_majority_lost_mid_migration_aborts_before_switchover(lab: LabPlan) -> None:
    node1, node2 = lab.nodes
    thread, holder = migrating(node1, "e1", "node2", bandwidth=1)
    lost = members(lab)[1:]
    for member in lost:
        etcd.stop(member)
    try:
        thread.join(timeout=120)
        out = holder["out"]
        assert out.returncode != 0, out.stdout
        assert "the cluster state (etcd) is unavailable" in out.stderr
        assert "stopped before the switchover" in out.stderr
        # The VM runs on the source only, and its records say so.
        assert runs_on(lab, "e1") == ["node1"]
        info = corral_json(node1, "vm", "show", "e1")
        assert (info["owner"], info["observed"]) == ("node1", "running")
        assert corral(node2, "vm", "show", "e1", "--node", "node2").returncode == 3
        # Nothing new starts while etcd cannot agree.
        refused = corral(node1, "vm", "create", "e2", "--memory", "64", "--disk", "8")
        assert refused.returncode == 4, refused.stderr
        assert "cluster state (etcd) is unavailable" in refused.stderr
        assert corral(node1, "vm", "show", "e2").returncode == 3  # nothing left behind
    finally:
        restart_etcd(lab, *lost)
    assert keys(lab, "vms/")["vms/e1"] == "node1"


def test_a_node_cut_off_from_etcd_goes_offline_and_nothing_runs_twice(lab: LabPlan) -> None:
    node1, node2 = lab.nodes
    corral_json(node2, "vm", "list")  # node2 has seen node1's VMs
    for _, ip in lab.etcd:
        run(netns.in_netns(node1.netns, ["ip", "route", "add", "blackhole", f"{ip.ip}/32"]))
    try:
        # node1's lease expires: node2 shows it offline, its VM unknown, and runs nothing.
        wait_for(
            lambda: not online(node2)["node1"],
            timeout=agents.OFFLINE_AFTER + 10,
            what="node2 to see node1 offline",
        )
        assert "vms/e1" not in keys(lab, "vms/", node=node2)
        listed = {v["name"]: (v["node"], v["observed"]) for v in corral_json(node2, "vm", "list")}
        assert listed["e1"] == ("node1", "unknown")
        assert observed(node2, "e1") == "stopped"
        assert observed(node1, "e1") == "running"  # a cut-off node does not kill its VMs
        # Nor can a second e1 be made on node2 while node1's cannot be asked.
        twin = corral(node2, "vm", "create", "e1", "--memory", "64", "--disk", "8")
        assert twin.returncode == 4, twin.stderr
        assert "already has its config at" in twin.stderr
        # node1 itself starts nothing new without etcd.
        refused = corral(node1, "vm", "create", "e3", "--memory", "64", "--disk", "8")
        assert refused.returncode == 4, refused.stderr
        assert "etcd" in refused.stderr
    finally:
        for _, ip in lab.etcd:
            run(netns.in_netns(node1.netns, ["ip", "route", "del", "blackhole", f"{ip.ip}/32"]))
    wait_for(lambda: online(node2)["node1"], timeout=30, what="node2 to see node1 again")
    wait_for(
        lambda: keys(lab, "vms/").get("vms/e1") == "node1",
        timeout=30,
        what="node1 to own e1 again under its new lease",
    )
    assert runs_on(lab, "e1") == ["node1"]


def test_a_target_that_loses_the_swap_never_runs_the_vm(lab: LabPlan) -> None:
    node1, node2 = lab.nodes
    thread, holder = migrating(node1, "e1", "node2", bandwidth=2)
    # Meanwhile etcd comes to say another node owns e1 (as after a fenced failover).
    assert keys(lab, "vms/e1", "node9") == {"vms/e1": "node9"}
    thread.join(timeout=300)
    out = holder["out"]
    assert out.returncode != 0, out.stdout
    receive = [t for t in corral_json(node2, "task", "list") if t["kind"] == "migration.receive"]
    assert receive[0]["state"] == "failed"
    assert "etcd refused the handoff of e1: it is owned by node9, not node1" in receive[0]["error"]
    # The target never ran it, and the source does not resume what etcd says is not its own.
    assert observed(node2, "e1") == "stopped"
    info = corral_json(node1, "vm", "show", "e1")
    assert info["owner"] == "node1"
    assert info["observed"] in ("paused", "migrated")  # QEMU's state after sending it
    assert info["events"][-2]["reason"] == "not resumed: etcd says node9 owns it, not node1"
    assert "node1's copy stays paused (etcd says node9 owns it, not node1)" in out.stderr
    refused = corral(node1, "migrate", "e1", "--recover", "--json")
    assert "etcd says node9 owns it" in refused.stdout, refused.stdout
    assert observed(node1, "e1") != "running"
    # Given back by whoever fenced it, it runs on again here.
    keys(lab, "vms/e1", "node1")
    recovered = corral(node1, "migrate", "e1", "--recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert "runs on node1" in recovered.stdout
    assert runs_on(lab, "e1") == ["node1"]
    assert corral_json(node1, "vm", "show", "e1")["observed"] == "running"


def test_a_drain_moves_the_vm_and_its_key(lab: LabPlan) -> None:
    node2 = lab.nodes[1]
    out = corral(node2, "node", "drain", "node1", "--json", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["progress"]["vms"]["e1"]["state"] == "moved"
    assert keys(lab, "vms/")["vms/e1"] == "node2"
    assert runs_on(lab, "e1") == ["node2"]
    corral_ok(node2, "node", "undrain", "node1")


def test_removing_a_node_revokes_its_lease_and_it_leaves_etcd(lab: LabPlan) -> None:
    node1, node2 = lab.nodes
    corral_ok(node2, "vm", "kill", "e1")
    corral_ok(node2, "vm", "delete", "e1")
    wait_for(lambda: "vms/e1" not in keys(lab, "vms/"), timeout=10, what="e1's key to go")
    corral_ok(node1, "node", "remove", "node2")
    assert "members/node2" not in keys(lab, "members/")  # at once: its lease was revoked
    assert [n["name"] for n in corral_json(node1, "node", "list")] == ["node1"]
    wait_for(
        lambda: state_of(node2)["error"] == "this node was removed from the cluster",
        timeout=15,
        what="node2 to learn it was removed",
    )
    # It writes nothing more: over a lease's time its member key does not come back.
    deadline = time.monotonic() + agents.OFFLINE_AFTER + 1
    while time.monotonic() < deadline:
        assert "members/node2" not in keys(lab, "members/")
    # etcd itself refuses its certificate from now on: node1, the CA holder, keeps the
    # cluster's revocation list where the lab's etcd members read it at every connection.
    with pytest.raises(CommandFailed, match="etcd is unreachable"):
        keys(lab, "members/", node=node2)
    assert "members/node1" in keys(lab, "members/")  # node1's still works
