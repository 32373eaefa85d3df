"""A real etcd (Debian's etcd-server) on loopback for a test module, with TLS from a cluster
CA made for it; stopped afterwards."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corral.cluster.pki import ClusterCA, PkiPaths
from corral.lab import etcd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def loopback_etcd(root: Path) -> Iterator[tuple[etcd.EtcdMember, ClusterCA, PkiPaths]]:
    """One member and its CA; the CA's folder also holds a node certificate ("node1"); the
    member reads the revocation list at `member.crl`."""
    paths = PkiPaths(root / "pki")
    ca = ClusterCA.create(paths, "test")
    ca.issue_node(paths, "node1", "127.0.0.1")
    crl = root / "crl.der"  # read by etcd at every new connection: none revoked yet
    crl.write_bytes(ca.revocation_list([]))
    member = etcd.EtcdMember(
        "etcd1",
        "127.0.0.1",
        root / "etcd1",
        client_port=free_port(),
        peer_port=free_port(),
        crl=crl,
    )
    etcd.start_cluster([member], ca, "test")
    try:
        yield member, ca, paths
    finally:
        etcd.stop(member)
