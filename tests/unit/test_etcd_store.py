"""The etcd client against a real etcd (Debian's etcd-server) on loopback, with TLS from a
cluster CA made for the test: keys, compare-and-swap, leases, and what a caller sees when
etcd is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.etcd_store import EtcdStore, StateUnavailable, parse_endpoints
from corral.cluster.pki import ClusterCA, PkiPaths, fingerprint, make_key_and_csr
from corral.errors import UserInputError
from corral.lab import etcd
from corral.waiting import wait_for
from tests.etcd_server import free_port, loopback_etcd

pytestmark = pytest.mark.skipif(not etcd.ETCD.exists(), reason="etcd-server is not installed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[etcd.EtcdMember, PkiPaths]]:
    with loopback_etcd(tmp_path_factory.mktemp("etcd")) as (member, _, paths):
        yield member, paths


def store_of(
    cluster: tuple[etcd.EtcdMember, PkiPaths], urls: str | None = None, prefix: str = "t"
) -> EtcdStore:
    member, paths = cluster
    endpoints = parse_endpoints(urls or member.client_url)
    return EtcdStore(endpoints, paths.ca_cert, paths.node_cert, paths.node_key, prefix, 1.0)


def test_endpoints_must_be_https_hostfree_port() -> None:
    assert parse_endpoints("https://10.0.0.1:2379, https://[::1]:2380") == [
        ("10.0.0.1", 2379),
        ("::1", 2380),
    ]
    for bad in ("http://10.0.0.1:2379", "10.0.0.1:2379", "https://h:99999", "https://h/x", ""):
        with pytest.raises(UserInputError, match="etcd-endpoints"):
            parse_endpoints(bad)


def test_keys_create_swap_and_delete(cluster: tuple[etcd.EtcdMember, PkiPaths]) -> None:
    store = store_of(cluster, prefix="kv")
    lease = store.grant(30)
    assert store.get("vms/a") is None
    assert store.create("vms/a", "node1", lease)
    assert not store.create("vms/a", "node2", lease)  # exists: the first owner stays
    got = store.get("vms/a")
    assert got is not None
    assert got.value == "node1"
    assert got.lease == lease
    assert not store.swap("vms/a", "node3", "node2", lease)  # not what it holds
    assert store.get("vms/a").value == "node1"  # type: ignore[union-attr]
    assert store.swap("vms/a", "node1", "node2", lease)
    assert store.get("vms/a").value == "node2"  # type: ignore[union-attr]
    assert not store.swap("vms/absent", "node1", "node2", lease)  # absent is not expected
    assert store.get("vms/absent") is None
    assert not store.delete_if("vms/a", "node1")
    assert store.delete_if("vms/a", "node2")
    assert store.get("vms/a") is None
    store.put("members/x", "1")
    revision, entries = store.get_prefix("members/")
    assert [e.key for e in entries] == ["/corral/kv/members/x"]
    assert revision >= 1
    assert store.revision() == revision  # reading changes nothing
    store.put("members/y", "2")
    assert store.revision() > revision


def test_prefixes_of_two_clusters_do_not_mix(cluster: tuple[etcd.EtcdMember, PkiPaths]) -> None:
    a, b = store_of(cluster, prefix="one"), store_of(cluster, prefix="one-more")
    a.put("members/n", "a")
    b.put("members/n", "b")
    assert [e.value for e in a.get_prefix("members/")[1]] == ["a"]


def test_a_lease_that_expires_or_is_revoked_takes_its_keys(
    cluster: tuple[etcd.EtcdMember, PkiPaths],
) -> None:
    store = store_of(cluster, prefix="lease")
    short = store.grant(2)
    assert store.create("vms/v", "node1", short)
    assert store.keep_alive(short) > 0
    wait_for(lambda: store.get("vms/v") is None, timeout=15, what="the lease to expire")
    assert store.keep_alive(short) == -1  # expired: renewing says so
    revoked = store.grant(60)
    store.put("members/n", "{}", revoked)
    store.revoke(revoked)
    assert store.get("members/n") is None


def test_an_unreachable_endpoint_is_passed_over(cluster: tuple[etcd.EtcdMember, PkiPaths]) -> None:
    member, _ = cluster
    store = store_of(cluster, f"https://127.0.0.1:{free_port()},{member.client_url}", "over")
    store.put("k", "v")
    assert store.get("k").value == "v"  # type: ignore[union-attr]


def test_etcd_gone_is_state_unavailable_naming_each_endpoint(
    cluster: tuple[etcd.EtcdMember, PkiPaths], tmp_path: Path
) -> None:
    port = free_port()
    store = store_of(cluster, f"https://127.0.0.1:{port}", "gone")
    with pytest.raises(StateUnavailable, match=f"127.0.0.1:{port}"):
        store.get("k")


def test_a_certificate_of_another_ca_is_refused(
    cluster: tuple[etcd.EtcdMember, PkiPaths], tmp_path: Path
) -> None:
    member, paths = cluster
    other = PkiPaths(tmp_path / "other")
    ClusterCA.create(other, "other").issue_node(other, "intruder", "127.0.0.1")
    store = EtcdStore(
        parse_endpoints(member.client_url), paths.ca_cert, other.node_cert, other.node_key, "x"
    )
    with pytest.raises(StateUnavailable):
        store.put("k", "v")


def test_a_certificate_on_the_revocation_list_is_refused_at_its_next_connection(
    cluster: tuple[etcd.EtcdMember, PkiPaths], tmp_path: Path
) -> None:
    """What `node remove` does to etcd when the CA holder keeps `crl_file` where etcd's
    `--client-crl-file` reads it."""
    member, paths = cluster
    assert member.crl is not None
    ca = ClusterCA.load(paths)
    removed = PkiPaths(tmp_path / "removed")
    key_pem, csr_pem = make_key_and_csr("node2")
    cert_pem = ca.sign(csr_pem, "node2", "127.0.0.1")
    removed.save_node(ca.cert_pem, cert_pem, key_pem)
    paths.record_issued(cert_pem)

    def store_of(who: PkiPaths) -> EtcdStore:
        return EtcdStore(
            parse_endpoints(member.client_url), paths.ca_cert, who.node_cert, who.node_key, "x"
        )

    store_of(removed).put("k", "v")  # a member: let in
    serial = paths.serial_of(fingerprint(cert_pem))
    assert serial is not None
    try:
        member.crl.write_bytes(ca.revocation_list([serial]))
        with pytest.raises(StateUnavailable):
            store_of(removed).put("k", "w")
        assert store_of(paths).get("k") is not None  # everyone else still is
    finally:
        member.crl.write_bytes(ca.revocation_list([]))
