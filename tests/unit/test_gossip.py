"""Gossip: beats are numbered per agent life and only newer ones are taken; a small cluster
is a full mesh, a larger one reaches FANOUT peers per interval, those whose facts are wanted
first, then the least recently reached, so every peer is reached within a few intervals."""

from __future__ import annotations

from corral.agent import gossip
from corral.agent.gossip import Beat, Beats


def test_only_newer_beats_are_taken_and_a_restart_is_newer() -> None:
    here, there = Beats("a"), Beats("b")
    first = there.beat({"facts_version": "v1", "vm_count": 1})
    taken = here.merge(there.table())
    assert taken == [("b", first)]
    assert here.merge(there.table()) == []  # the same beat again: nothing new
    there.beat({"facts_version": "v1", "vm_count": 2})
    [(name, beat)] = here.merge(there.table())
    assert (name, beat.sequence, beat.live["vm_count"]) == ("b", 2, 2)
    reborn = Beats("b")  # restarted: a later generation, sequence from 1 again
    reborn.beat({"facts_version": "v2"})
    assert [n for n, _ in here.merge(reborn.table())] == ["b"]


def test_own_beats_and_garbage_are_never_taken() -> None:
    here = Beats("a")
    here.beat({"facts_version": "v"})
    forged = {"a": [here.generation + 10, 99, "x", {}], "c": ["not", "a", "beat"], "d": 7}
    assert here.merge(forged) == []
    assert here.merge("nonsense") == []


def test_a_beat_travels_through_a_third_member() -> None:
    a, b, c = Beats("a"), Beats("b"), Beats("c")
    a.beat({"facts_version": "va"})
    b.merge(a.table())  # a talks to b
    learned = c.merge(b.table())  # b talks to c: c hears of a without talking to it
    assert [n for n, _ in learned] == ["a"]
    assert learned[0][1] == Beat.from_json(a.table()["a"])


def test_small_clusters_are_a_full_mesh() -> None:
    peers = ["b", "c", "d"]
    reached = {"c": 100.0}
    chosen = gossip.choose(peers, str, {}, reached, set(), since=50.0, stale=0.0, fanout=3)
    assert chosen == ["b", "d"]  # c was reached this interval


def test_a_peer_that_called_is_not_called_back_unless_not_reached_for_long() -> None:
    peers = ["b", "c", "d"]
    heard = {"b": 100.0, "c": 100.0}  # both sent a heartbeat this interval
    reached = {"b": 90.0, "c": 10.0}  # b reached lately, c long ago
    chosen = gossip.choose(peers, str, heard, reached, set(), since=95.0, stale=50.0)
    assert chosen == ["c", "d"]  # c: is it reachable from here at all?


def test_larger_clusters_reach_fanout_peers_wanted_first_then_the_oldest() -> None:
    peers = [f"n{i}" for i in range(10)]
    reached = {f"n{i}": float(i) for i in range(10)}
    chosen = gossip.choose(peers, str, {}, reached, {"n7"}, since=100.0, stale=0.0, fanout=3)
    assert chosen == ["n7", "n0", "n1"]


def test_every_peer_is_reached_within_a_few_intervals() -> None:
    peers = [f"n{i}" for i in range(15)]
    reached: dict[str, float] = {}
    for interval in range(1, 6):
        since = interval - 0.5
        for name in gossip.choose(peers, str, {}, reached, set(), since, stale=0.0, fanout=3):
            reached[name] = float(interval)
    assert set(reached) == set(peers)  # 15 peers, 3 an interval: all in 5 intervals


def test_a_relayed_beat_keeps_its_age() -> None:
    """A beat heard through others is as old as its travels: a dead member is shown offline
    `offline_after` after its last beat, not after that beat's last relay."""
    relay = Beats("relay")
    relay.merge({"far": [1.0, 7, "v", {}, 3.5]})
    [generation, sequence, version, live, age] = relay.table()["far"]
    assert (generation, sequence, version, live) == (1.0, 7, "v", {})
    assert age >= 3.5
    assert Beat.from_json([1.0, 7, "v", {}, -5]).age == 0.0  # a negative age is none
    assert Beat.from_json([1.0, 7, "v", {}]).age == 0.0  # from an agent without ages
