"""Heartbeats carry a version and the live numbers; the whole facts travel only when the
version held is not the current one; a heartbeat costs no database write; only members
send them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.agent.app import api_app
from corral.agent.facts_cache import FactsCache, version_of
from corral.agent.node_agent import NodeAgent
from tests.unit.member_apps import certificate, member_agent, peer_app


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NodeAgent]:
    a = member_agent(tmp_path)
    yield a
    a.close()


def peer_facts(version_tag: str = "a") -> dict[str, Any]:
    facts: dict[str, Any] = {"arch": "x86_64", "bridges": [version_tag], "vm_count": 0}
    facts["facts_version"] = version_of(facts)
    return facts


def test_the_version_ignores_the_live_numbers() -> None:
    base = {"arch": "x86_64", "memory_free_mib": 10, "vm_count": 1, "draining": False}
    moved = {**base, "memory_free_mib": 99, "vm_count": 3, "draining": True}
    assert version_of(base) == version_of(moved)
    assert version_of(base) != version_of({**base, "arch": "aarch64"})


def test_the_version_ignores_free_disk_space_but_not_the_storage() -> None:
    data = {"path": "/d", "fstype": "nfs4", "shared_fs": True, "free_bytes": 10}
    base = {"arch": "x86_64", "storage": {"data": data}}
    fuller = {**base, "storage": {"data": {**data, "free_bytes": 5}}}
    assert version_of(base) == version_of(fuller)
    moved = {**base, "storage": {"data": {**data, "fstype": "ext4", "shared_fs": False}}}
    assert version_of(base) != version_of(moved)


def test_the_cache_computes_once_and_reads_the_live_part_once_a_beat() -> None:
    computed: list[int] = []
    memory = iter(range(100, 200))

    def compute() -> dict[str, Any]:
        computed.append(1)
        return {"arch": "x86_64", "memory_free_mib": 1}

    cache = FactsCache(compute, lambda: {"memory_free_mib": next(memory)})
    first, second = cache.live(), cache.live()
    assert len(computed) == 1
    assert first["facts_version"] == second["facts_version"]
    # One read serves a beat's heartbeats and answers; a change here makes the next fresh.
    assert (first["memory_free_mib"], second["memory_free_mib"]) == (100, 100)
    cache.changed()
    assert cache.live()["memory_free_mib"] == 101
    assert cache.full()["arch"] == "x86_64"
    cache.refresh()
    assert len(computed) == 2


def test_a_member_heartbeat_is_answered_and_recorded(agent: NodeAgent) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    facts = peer_facts()
    first = client.post("/v1/heartbeat", json={"live": {}, "known": None, "facts": facts})
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["need_facts"] is False
    assert answer["facts"]["facts_version"] == answer["live"]["facts_version"]  # unknown: sent
    assert agent.registry.get("peer").facts["bridges"] == ["a"]

    # Same version held: no facts back, the peer's live numbers taken without a write.
    writes = agent.db.query("SELECT last_seen FROM nodes WHERE name = 'peer'")[0][0]
    live = {"facts_version": facts["facts_version"], "vm_count": 0, "memory_free_mib": 77}
    second = client.post(
        "/v1/heartbeat", json={"live": live, "known": answer["live"]["facts_version"]}
    )
    assert "facts" not in second.json()
    assert second.json()["need_facts"] is False
    seen = agent.registry.get("peer")
    assert (seen.facts["vm_count"], seen.facts["memory_free_mib"]) == (0, 77)
    assert seen.last_seen is not None
    assert seen.last_seen > writes
    assert agent.db.query("SELECT last_seen FROM nodes WHERE name = 'peer'")[0][0] == writes

    # The peer's facts changed: it is asked for them, and they are taken when they come.
    changed = peer_facts("b")
    live = {"facts_version": changed["facts_version"], "vm_count": 4}
    third = client.post("/v1/heartbeat", json={"live": live, "known": None}).json()
    assert third["need_facts"] is True
    assert agent.registry.get("peer").facts["bridges"] == ["a"]
    client.post("/v1/heartbeat", json={"live": live, "facts": changed})
    assert agent.registry.get("peer").facts["bridges"] == ["b"]


def test_the_local_cli_is_no_node_to_hear_from(agent: NodeAgent) -> None:
    local = TestClient(api_app(agent, "local"))
    answer = local.post("/v1/heartbeat", json={"live": {}})
    assert answer.status_code == 422  # a user input error, naming the caller
    assert "heartbeats come from members" in answer.json()["error"]["message"]


def test_a_certificate_of_no_member_is_refused(agent: NodeAgent) -> None:
    stranger = TestClient(peer_app(agent, certificate(agent, "gone", "127.0.0.9", admit=False)))
    answer = stranger.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts()})
    assert answer.status_code == 403
    with pytest.raises(Exception, match="no node 'gone'"):
        agent.registry.get("gone")


def test_a_member_heard_of_through_another_is_alive_and_asked_for_its_facts(
    agent: NodeAgent,
) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    certificate(agent, "third", "127.0.0.3")
    assert agent.registry.get("third").last_seen is None
    news = {
        "third": [1.0, 5, 0, "v-third", {"facts_version": "v-third", "vm_count": 2}],
        "ghost": [1.0, 1, 0, "v", {}],  # no member of that name: ignored
    }
    body = {"live": {}, "facts": peer_facts(), "news": news}
    assert client.post("/v1/heartbeat", json=body).status_code == 200
    third = agent.registry.get("third")
    assert third.last_seen is not None
    assert third.online(time.time(), agent.settings.offline_after)
    assert third.facts["vm_count"] == 2
    assert "third" in agent.gossip._asking  # its facts are not held: it is reached directly


def test_a_member_declared_offline_is_offline_here_until_a_newer_state(agent: NodeAgent) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    certificate(agent, "third", "127.0.0.3")
    client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts(), "news": {}})
    client.post("/v1/heartbeat", json={"live": {}, "news": {"third": [1.0, 5, 0, "v", {}]}})
    assert agent.registry.get("third").online(time.time(), agent.settings.offline_after)
    answer = client.post(
        "/v1/heartbeat", json={"live": {}, "news": {"third": [1.0, 5, 1, "v", {}]}}
    )
    assert answer.status_code == 200
    assert not agent.registry.get("third").online(time.time(), agent.settings.offline_after)
    assert answer.json()["news"]["third"][2] == 1  # passed on
    client.post("/v1/heartbeat", json={"live": {}, "news": {"third": [1.0, 6, 0, "v", {}]}})
    assert agent.registry.get("third").online(time.time(), agent.settings.offline_after)


def test_a_claim_that_this_node_is_offline_is_refuted_in_the_answer(agent: NodeAgent) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    own, _ = agent.gossip.view.own(agent.facts_cache.live())
    claim = [own.generation, own.sequence, 1, own.version, {}]
    answer = client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts(), "you": claim})
    generation, sequence, offline, *_ = answer.json()["state"]
    assert (generation, offline) == (own.generation, 0)
    assert sequence > own.sequence
    assert answer.json()["news"][agent.name][1] == sequence


def test_a_silent_subject_is_declared_offline_once_and_not_again_after_it_refutes(
    agent: NodeAgent,
) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    client.post(
        "/v1/heartbeat", json={"live": {}, "facts": peer_facts(), "state": [1.0, 1, 0, "v", {}]}
    )
    gossip = agent.gossip
    assert agent.registry.get("peer").online(time.time(), agent.settings.offline_after)
    now = time.monotonic()
    gossip._watching = {"peer": now - 100}  # watched for long
    gossip._ok["third"] = now  # this node hears from others: it is not the one cut off
    gossip._ok["peer"] = now - gossip.detect_after / 2
    gossip._detect(now)
    assert not gossip.view.offline("peer")  # not silent for long enough yet
    gossip._ok["peer"] = now - gossip.detect_after - 1
    gossip._detect(now)
    assert gossip.view.offline("peer")
    assert not agent.registry.get("peer").online(time.time(), agent.settings.offline_after)
    # It refutes (it is alive; only this node's link to it fails): not declared again.
    gossip.view.merge({"peer": [1.0, 2, 0, "v", {}]})
    gossip._detect(now)
    assert not gossip.view.offline("peer")


def test_a_node_that_hears_from_no_one_claims_nothing(agent: NodeAgent) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    certificate(agent, "third", "127.0.0.3")
    client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts()})
    gossip = agent.gossip
    now = time.monotonic()
    gossip._watching = {"peer": now - 100, "third": now - 100}
    gossip._ok = {"peer": now - gossip.detect_after - 1, "third": now - gossip.detect_after - 1}
    gossip._detect(now)
    assert not gossip.view.offline("peer")
    assert not gossip.view.offline("third")
    gossip._ok["third"] = now  # one answers again: the other is the silent one
    gossip._detect(now)
    assert gossip.view.offline("peer")
    assert not gossip.view.offline("third")


def test_a_member_stays_online_without_news_only_while_this_node_hears_from_anyone(
    agent: NodeAgent,
) -> None:
    """No news is good news, but a node cut off from everyone hears no news either."""
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    certificate(agent, "third", "127.0.0.3")
    client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts()})
    client.post("/v1/heartbeat", json={"live": {}, "news": {"third": [1.0, 5, 0, "v", {}]}})
    after = agent.settings.offline_after
    long_ago = time.time() - after - 1
    agent.registry._alive["third"] = (long_ago, {})  # its state came long ago: no news since
    with agent.db.transaction() as conn:
        conn.execute("UPDATE nodes SET last_seen = ? WHERE name = 'third'", (long_ago,))
    assert agent.registry.get("third").online(time.time(), after)  # vouched for
    assert agent.gossip._contact is not None
    agent.gossip._contact -= after + 1  # this node's last exchange with anyone, as long ago
    assert not agent.registry.get("third").online(time.time(), after)
    client.post("/v1/heartbeat", json={"live": {}})  # an exchange again
    assert agent.registry.get("third").online(time.time(), after)


def test_the_whole_view_is_sent_when_asked_for(agent: NodeAgent) -> None:
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    certificate(agent, "third", "127.0.0.3")
    agent.gossip.view.merge({"third": [1.0, 5, 0, "v", {}]})
    plain = client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts()}).json()
    assert "view" not in plain
    whole = client.post("/v1/heartbeat", json={"live": {}, "need_view": True}).json()
    assert whole["view"]["third"] == [1.0, 5, 0, "v", {}]


def test_a_member_this_node_cannot_reach_is_not_kept_online_by_others(agent: NodeAgent) -> None:
    """Its heartbeats still come (it knows this node's address), but this node's own fail
    (its address here may be wrong): until one succeeds it ages here, for placement and
    migrations must reach it."""
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts()})
    seen = agent.registry.get("peer").last_seen
    agent.gossip._unreachable.add("peer")
    live = {"facts_version": peer_facts()["facts_version"], "vm_count": 9}
    client.post("/v1/heartbeat", json={"live": live, "state": [1.0, 1, 0, "v", live]})
    assert agent.registry.get("peer").last_seen == seen
    assert agent.registry.get("peer").facts.get("vm_count") != 9


def test_a_changed_vm_count_is_written_at_once(agent: NodeAgent) -> None:
    """A restarted agent must still say how many VMs a member had at its last heartbeat."""
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    facts = peer_facts()
    client.post("/v1/heartbeat", json={"live": {}, "facts": facts})
    live = {"facts_version": facts["facts_version"], "vm_count": 3}
    client.post("/v1/heartbeat", json={"live": live})
    stored = agent.db.query("SELECT facts FROM nodes WHERE name = 'peer'")[0][0]
    assert '"vm_count": 3' in stored


def test_an_unreachable_member_is_tried_at_every_beat_even_while_it_calls(
    agent: NodeAgent,
) -> None:
    """Its heartbeats here do not show it reachable from here: only one from here does."""
    client = TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))
    gossip = agent.gossip
    tried: list[str] = []
    gossip._exchange = lambda node: tried.append(node.name)  # type: ignore[method-assign]
    gossip._beat()  # this node's first state: news for every subject
    tried.clear()
    client.post("/v1/heartbeat", json={"live": {}, "facts": peer_facts()})
    gossip._beat()
    assert tried == []  # it called within the interval: nothing to send
    gossip._unreachable.add("peer")
    live = {"facts_version": peer_facts()["facts_version"]}  # its facts are held: no asking
    client.post("/v1/heartbeat", json={"live": live})
    gossip._beat()
    assert tried == ["peer"]
