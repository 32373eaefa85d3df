"""One keep-alive client per member: reused by every caller (closing a view keeps it),
replaced when the member's address changes, closed when the member is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.api_errors import Unreachable
from corral.cluster.peer_client import PeerPool
from corral.cluster.pki import ClusterCA, PkiPaths
from corral.cluster.registry import NodeRecord


def node(name: str, address: str) -> NodeRecord:
    return NodeRecord(name, address, 4710, 0.0, None, {}, False, "a" * 64)


def test_callers_share_one_client_per_member(tmp_path: Path) -> None:
    pki = PkiPaths(tmp_path / "pki")
    ClusterCA.create(pki, "pool").issue_node(pki, "me", "127.0.0.1")
    pool = PeerPool(pki)
    first = pool.client(node("node2", "127.0.0.2"), timeout=2)
    with first:
        pass  # a caller done with its view
    second = pool.client(node("node2", "127.0.0.2"), timeout=9)
    assert second.http is first.http
    assert not first.http.is_closed
    assert (first.timeout, second.timeout) == (2, 9)
    assert second.extensions == {"sni_hostname": "node2"}  # checked by name, not address
    moved = pool.client(node("node2", "127.0.0.3"))
    assert moved.http is not first.http
    assert first.http.is_closed
    pool.forget({"node3"})
    assert moved.http.is_closed
    with pytest.raises(Unreachable, match="closed"):
        moved.get("/health")
