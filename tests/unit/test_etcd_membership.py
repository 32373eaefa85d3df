"""A node's part of the state in etcd, against a real etcd (Debian's etcd-server) on loopback:
its lease and keys, the VMs it claims, the compare-and-swap a migration's target makes,
when a source may run its copy again, and a removed node leaving etcd."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.agent.etcd_membership import EtcdMembership
from corral.cluster.pki import ClusterCA, PkiPaths, fingerprint
from corral.cluster.registry import Member, NodeRegistry
from corral.database import Database
from corral.errors import ConflictError
from corral.lab import etcd
from tests.etcd_server import free_port, loopback_etcd

pytestmark = pytest.mark.skipif(not etcd.ETCD.exists(), reason="etcd-server is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[etcd.EtcdMember, ClusterCA]]:
    with loopback_etcd(tmp_path_factory.mktemp("etcd-membership")) as (member, ca, _):
        yield member, ca


class Node:
    """One node's membership with its own certificate, registry and VMs."""

    def __init__(
        self, server: tuple[etcd.EtcdMember, ClusterCA], root: Path, name: str, peers: list[str]
    ) -> None:
        member, ca = server
        self.pki = PkiPaths(root / name / "pki")
        self.pki.folder.mkdir(parents=True)
        ca.issue_node(self.pki, name, "127.0.0.1")
        self.registry = NodeRegistry(Database(root / name / "corral.db"))
        for i, peer in enumerate([name, *peers]):
            self.registry.admit(Member(peer, f"127.0.0.{i + 1}", 4710, 0.0, f"fp-{peer}"))
        self.vms: list[str] = []
        self.live: dict[str, Any] = {"facts_version": "v1", "vm_count": 0}
        self.membership = EtcdMembership(
            name,
            (member.client_url,),
            4,  # the lease TTL: longer than a failed call takes (RETRY_FOR)
            self.pki,
            self.registry,
            owned_vms=lambda: list(self.vms),
            live=lambda: dict(self.live),
            full_facts=lambda: {"arch": "x86_64", **self.live},
            timeout=1.0,
        )


@pytest.fixture
def pair(server: tuple[etcd.EtcdMember, ClusterCA], tmp_path: Path) -> tuple[Node, Node]:
    return (
        Node(server, tmp_path, "n1", ["n2"]),
        Node(server, tmp_path, "n2", ["n1"]),
    )


def owner(node: Node, vm: str) -> str | None:
    return node.membership.owner(vm)


def test_members_are_online_while_their_lease_lives(pair: tuple[Node, Node]) -> None:
    n1, n2 = pair
    n1.membership.tick()
    n2.membership.tick()
    n1.membership.tick()
    assert n1.membership.state.reachable
    assert set(n1.membership.state.members) == {"n1", "n2"}
    assert n1.registry.get("n2").facts["arch"] == "x86_64"  # its facts, from etcd
    assert n1.registry.get("n2").last_seen is not None
    # n2 stops renewing (its agent died): its key goes with its lease, and n1 says so.
    n2.membership.store().revoke(n2.membership.state.lease or 0)
    n1.membership.tick()
    assert set(n1.membership.state.members) == {"n1"}
    assert n1.registry.get("n2").last_seen is None


def test_vms_are_claimed_and_handed_over_only_from_their_owner(pair: tuple[Node, Node]) -> None:
    n1, n2 = pair
    n1.vms = ["web"]
    n1.membership.tick()
    n2.membership.tick()
    assert owner(n1, "web") == "n1"
    n2.vms = ["web"]  # n2 records a VM etcd says is n1's: it is not taken
    n2.membership.tick()
    assert owner(n1, "web") == "n1"
    with pytest.raises(ConflictError, match="it is owned by n1, not n9"):
        n2.membership.claim_from("web", "n9")
    n2.membership.claim_from("web", "n1")
    assert owner(n1, "web") == "n2"
    assert n1.membership.may_resume("web") == (False, "etcd says n2 owns it, not n1")
    n1.vms = []  # the source let it go: its key, now n2's, stays
    n1.membership.tick()
    assert owner(n1, "web") == "n2"
    n2.vms = []  # deleted on n2: its key goes
    n2.membership.tick()
    assert owner(n1, "web") is None


def test_a_source_resumes_only_while_etcd_or_its_own_lease_says_it_may(
    pair: tuple[Node, Node],
) -> None:
    n1, _ = pair
    n1.vms = ["db"]
    n1.membership.tick()
    assert n1.membership.may_resume("db") == (True, "etcd says this node owns it")
    # etcd unreachable: only while this node's lease is alive by its own clock.
    n1.membership._store = None
    n1.membership.endpoints = [("127.0.0.1", free_port())]
    allowed, why = n1.membership.may_resume("db")
    assert allowed
    assert "lease is still alive" in why
    n1.membership.state.renewed -= 10  # longer ago than the TTL: it may have expired
    allowed, why = n1.membership.may_resume("db")
    assert not allowed
    assert "lease expired" in why
    n1.membership.state.renewed = n1.membership.state.ok_at = time.monotonic()
    n1.membership.tick()  # one failed look (an election, say) is not etcd lost
    assert n1.membership.state.reachable
    n1.membership.require_healthy("create x")
    n1.membership.state.ok_at -= 10  # no look succeeded for longer than half a lease
    n1.membership.state.renewed -= 10
    n1.membership.tick()  # and then nothing new starts
    assert not n1.membership.state.reachable
    with pytest.raises(ConflictError, match="the cluster state \\(etcd\\) is unavailable"):
        n1.membership.require_healthy("create x")


def test_a_removed_node_ends_its_lease_and_writes_nothing_more(pair: tuple[Node, Node]) -> None:
    n1, n2 = pair
    n2.vms = ["app"]
    n1.membership.tick()
    n2.membership.tick()
    assert owner(n1, "app") == "n2"
    n1.membership.revoke_member("n2", fingerprint(n2.pki.node_cert.read_bytes()))
    assert owner(n1, "app") is None  # its VM keys went with its lease
    n2.membership.tick()
    assert n2.membership.removed
    assert n2.membership.state.error == "this node was removed from the cluster"
    n2.membership.tick()
    n1.membership.tick()
    assert set(n1.membership.state.members) == {"n1"}
    assert owner(n1, "app") is None


def test_a_new_vm_is_claimed_at_once_and_a_taken_name_is_refused(pair: tuple[Node, Node]) -> None:
    n1, n2 = pair
    n1.membership.tick()
    n2.membership.tick()
    n1.membership.claim_new("fresh")
    assert owner(n1, "fresh") == "n1"
    n1.membership.claim_new("fresh")  # its own already: fine
    with pytest.raises(ConflictError, match="etcd says n1 owns a VM named 'fresh'"):
        n2.membership.claim_new("fresh")


def test_a_takeover_that_cannot_run_gives_the_vm_back_to_its_source(
    pair: tuple[Node, Node],
) -> None:
    n1, n2 = pair
    n1.vms = ["moved"]
    n1.membership.tick()
    n2.membership.tick()
    n2.membership.claim_from("moved", "n1")
    n2.membership.give_back("moved", "n1")
    assert owner(n1, "moved") == "n1"
    entry = n1.membership.store().get("vms/moved")
    assert entry is not None
    assert entry.lease == n1.membership.state.lease  # the source's lease again
    assert n1.membership.may_resume("moved") == (True, "etcd says this node owns it")
