"""The member list: admitted by the CA holder only with a name, an address and a
certificate nobody has; a removal revokes for good; followers take only a newer list."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cluster.registry import Member, NodeRegistry, RegistrySnapshot
from corral.database import Database
from corral.errors import ConflictError

A = Member("node1", "10.0.0.1", 4710, 1.0, "a" * 64, holds_ca=True)
B = Member("node2", "10.0.0.2", 4710, 2.0, "b" * 64)


@pytest.fixture
def registry(tmp_path: Path) -> NodeRegistry:
    return NodeRegistry(Database(tmp_path / "corral.db"))


def test_admission_numbers_each_change_and_refuses_any_clash(registry: NodeRegistry) -> None:
    assert registry.admit(A) == 1
    assert registry.admit(B) == 2
    for clash in (
        Member("node2", "10.0.0.9", 4710, 3.0, "c" * 64),  # the name
        Member("node9", "10.0.0.2", 4711, 3.0, "c" * 64),  # the address, on any port
        Member("node9", "10.0.0.9", 4710, 3.0, "b" * 64),  # the certificate
    ):
        with pytest.raises(ConflictError):
            registry.admit(clash)
    assert registry.version == 2
    assert registry.member_by_fingerprint("b" * 64) == ("node2", False)
    assert registry.member_by_fingerprint("a" * 64) == ("node1", True)
    holder = registry.ca_holder()
    assert holder is not None
    assert holder.name == "node1"


def test_a_removed_members_certificate_is_revoked_for_good(registry: NodeRegistry) -> None:
    registry.admit(A)
    registry.admit(B)
    assert registry.member_by_fingerprint("b" * 64) == ("node2", False)  # kept in memory
    assert registry.revoke("node2") == 3
    assert registry.member_by_fingerprint("b" * 64) is None  # the removal is seen at once
    assert registry.is_revoked("b" * 64)
    with pytest.raises(ConflictError, match="revoked"):
        registry.admit(Member("node2", "10.0.0.2", 4710, 4.0, "b" * 64))
    # The same name may come back with a new certificate (a new join).
    registry.admit(Member("node2", "10.0.0.2", 4710, 4.0, "d" * 64))
    assert registry.is_revoked("b" * 64)


def test_a_follower_takes_only_a_newer_list(tmp_path: Path, registry: NodeRegistry) -> None:
    registry.admit(A)
    registry.admit(B)
    follower = NodeRegistry(Database(tmp_path / "follower.db"))
    assert follower.apply(registry.snapshot())
    follower.mark_seen("node2", {"memory": 1})
    registry.revoke("node2")
    newer = registry.snapshot()
    assert follower.apply(newer)
    assert [n.name for n in follower.list()] == ["node1"]
    assert follower.is_revoked("b" * 64)
    assert follower.version == newer.version
    # An older or equal list changes nothing (a replay of the join's list, say).
    stale = RegistrySnapshot(2, (A, B), ())
    assert not follower.apply(stale)
    assert not follower.apply(newer)
    assert [n.name for n in follower.list()] == ["node1"]


def test_a_member_whose_certificate_changed_is_a_new_member(
    tmp_path: Path, registry: NodeRegistry
) -> None:
    follower = NodeRegistry(Database(tmp_path / "follower.db"))
    follower.apply(RegistrySnapshot(2, (A, B), ()))
    follower.mark_seen("node2", {"vm_count": 3}, at=100.0)
    follower.mark_seen("node1", {"vm_count": 1}, at=100.0)
    rejoined = Member("node2", "10.0.0.2", 4710, 5.0, "e" * 64)
    follower.apply(RegistrySnapshot(4, (A, rejoined), ("b" * 64,)))
    node2 = follower.get("node2")
    assert (node2.fingerprint, node2.last_seen, node2.facts) == ("e" * 64, None, {})
    node1 = follower.get("node1")
    assert node1.last_seen == 100.0  # same certificate: what this node saw of it stays


def test_no_list_moves_a_member_to_another_address(tmp_path: Path) -> None:
    follower = NodeRegistry(Database(tmp_path / "follower.db"))
    follower.apply(RegistrySnapshot(2, (A, B), ()))
    moved = Member("node2", "10.0.0.66", 4710, 2.0, "b" * 64)
    follower.apply(RegistrySnapshot(3, (A, moved), ()))
    assert follower.get("node2").address == "10.0.0.2"
