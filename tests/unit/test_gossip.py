"""Gossip: states are numbered per agent life and change only when something changed; an
offline claim wins at an equal key and is refuted by a newer one; news is what changed
lately; the watch rings give every member watchers at a degree that does not grow with the
cluster, and news crosses them in a few hops."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from corral.agent.gossip import RINGS, Rings, State, View, moved


def alive(generation: float, sequence: int) -> list[object]:
    return State(generation, sequence, False, "v", {}).to_json()


def test_a_state_is_newer_by_life_then_sequence_and_offline_wins_a_tie() -> None:
    old = State(1.0, 5, False, "v", {})
    assert State(1.0, 6, False, "v", {}).newer_than(old)
    assert State(1.0, 5, True, "v", {}).newer_than(old)  # a claim at the state held
    assert not old.newer_than(State(1.0, 5, True, "v", {}))
    assert State(2.0, 1, False, "v", {}).newer_than(State(1.0, 9, True, "v", {}))  # restart


def test_an_idle_member_makes_no_news() -> None:
    view = View("a", news_window=60)
    live = {"facts_version": "v1", "vm_count": 0, "memory_free_mib": 4000}
    first, new = view.own(live)
    assert new
    assert first.sequence == 1
    assert view.own({**live, "memory_free_mib": 3100}) == (first, False)  # less than a GiB
    moved_state, new = view.own({**live, "memory_free_mib": 2900})
    assert new
    assert moved_state.sequence == 2
    assert view.own({**live, "memory_free_mib": 2900, "vm_count": 1})[0].sequence == 3
    assert view.own({**live, "memory_free_mib": 2900, "facts_version": "v2"})[0].sequence == 4
    big = {"memory_free_mib": 200_000}
    assert not moved(big, {"memory_free_mib": 185_000})  # less than a tenth
    assert moved(big, {"memory_free_mib": 179_000})
    assert moved({"draining": False}, {"draining": True})


def test_only_newer_states_are_taken_and_garbage_is_ignored() -> None:
    view = View("a", news_window=60)
    assert [n for n, _ in view.merge({"b": alive(1.0, 2)})] == ["b"]
    assert view.merge({"b": alive(1.0, 1)}) == []
    assert view.merge({"b": alive(1.0, 2)}) == []
    assert view.merge({"c": [1.0], "d": "x", "e": [1.0, 1, 0, "v", "not live"]}) == []
    assert view.merge(["not", "a", "table"]) == []
    assert view.get("b") == State(1.0, 2, False, "v", {})


def test_a_claim_that_this_node_is_offline_is_refuted() -> None:
    view = View("a", news_window=60)
    own, _ = view.own({"facts_version": "v"})
    claim = State(own.generation, own.sequence, True, "v", {}).to_json()
    fresh = view.merge({"a": claim})
    assert [(n, s.offline, s.sequence) for n, s in fresh] == [("a", False, own.sequence + 1)]
    assert view.merge({"a": alive(own.generation - 10, 99)}) == []  # an earlier life's


def test_a_declared_member_is_offline_at_the_state_held_and_a_newer_one_revives_it() -> None:
    view = View("a", news_window=60)
    view.merge({"b": alive(1.0, 3)})
    declared = view.declare_offline("b")
    assert declared is not None
    assert declared.key == (1.0, 3, True)
    assert view.declare_offline("b") is None  # already
    assert view.offline("b")
    assert view.merge({"b": alive(1.0, 3)}) == []  # the same state does not undo the claim
    view.merge({"b": alive(1.0, 4)})
    assert not view.offline("b")
    unknown = view.declare_offline("never-heard")
    assert unknown is not None
    assert unknown.key == (0.0, 0, True)


def test_news_is_what_changed_within_the_window_and_digests_compare_views() -> None:
    here, there = View("a", news_window=0.2), View("b", news_window=0.2)
    a, _ = here.own({"facts_version": "va"})
    b, _ = there.own({"facts_version": "vb"})
    here.merge({"c": alive(1.0, 1)})
    assert set(here.news()) == {"a", "c"}
    assert here.digest() != there.digest()
    there.merge({"a": a.to_json(), "c": alive(1.0, 1)})
    here.merge({"b": b.to_json()})
    assert here.digest() == there.digest()  # the same states, whoever holds them
    time.sleep(0.25)  # the news window itself is what is under test
    assert here.news() == {}
    here.declare_offline("c")
    assert set(here.news()) == {"c"}
    assert here.digest() != there.digest()
    here.forget({"b"})
    assert here.names() == {"a", "b"}


@pytest.mark.parametrize("size", [2, 3, 4, 8, 16, 64, 200])
def test_every_member_is_watched_and_no_one_watches_or_is_watched_by_many(size: int) -> None:
    names = [f"node{i}" for i in range(1, size + 1)]
    rings = Rings()
    subjects = {n: Rings().subjects(n, names) for n in names}  # each node computes alone
    assert subjects == {n: rings.subjects(n, names) for n in names}
    watchers = Counter(s for watched in subjects.values() for s in watched)
    assert set(watchers) == set(names)  # every member has a watcher
    for n, watched in subjects.items():
        assert n not in watched
        assert len(watched) == len(set(watched)) == min(RINGS, size - 1)
    assert max(watchers.values()) <= 2 * RINGS  # the degree does not grow with the size


@pytest.mark.parametrize("size", [16, 200, 1000])
def test_news_pushed_to_subjects_reaches_everyone_in_few_hops(size: int) -> None:
    names = [f"n{i}" for i in range(size)]
    rings = Rings()
    subjects = {n: rings.subjects(n, names) for n in names}
    reached, frontier, hops = {names[0]}, {names[0]}, 0
    while frontier:
        frontier = {s for n in frontier for s in subjects[n]} - reached
        reached |= frontier
        hops += frontier != set()
    assert reached == set(names)
    assert hops <= 4 * size.bit_length()  # logarithmic, not the ring's n / RINGS


def test_the_rings_skip_an_offline_member_so_its_subjects_keep_a_watcher() -> None:
    names = [f"node{i}" for i in range(1, 9)]
    rings = Rings()
    gone = "node4"
    orphans = set(rings.subjects(gone, names))
    online = [n for n in names if n != gone]
    watched = {s for n in online for s in rings.subjects(n, online)}
    assert orphans - {gone} <= watched
    assert gone not in watched
