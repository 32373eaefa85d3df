"""Membership by gossip on a 5-node lab of real agents (mutual TLS, network namespaces, no
VMs): each agent watches two members and every member is watched; a heartbeat is no news
(only a change of state is); a killed agent is shown offline on every node within the
configured time (declared by its watchers, pushed to the rest) and online again when it
restarts; a node cut off from everyone shows every peer offline, is shown offline
everywhere, claims nothing of the others, and is online everywhere again once its links
come back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from corral.commands import run
from corral.errors import WaitTimeout
from corral.lab import agents, netns
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.vm_helpers import corral_json
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cgsp", 5) as plan:
        wait_for(lambda: everyone_sees(plan, set()), timeout=60, what="every node online")
        yield plan


def online(node: LabNode) -> dict[str, bool]:
    return {n["name"]: n["online"] for n in corral_json(node, "node", "list")}


def offline_seen(node: LabNode) -> set[str]:
    return {name for name, up in online(node).items() if not up}


def everyone_sees(plan: LabPlan, down: set[str], among: Sequence[LabNode] = ()) -> bool:
    """Every node of `among` (all) shows exactly `down` offline."""
    return all(offline_seen(n) == down for n in among or plan.nodes)


def gossip_state(node: LabNode) -> dict[str, Any]:
    state: dict[str, Any] = corral_json(node, "cluster", "status")["state"]
    assert state["mode"] == "gossip"
    return state


def test_each_agent_watches_two_members_and_heartbeats_are_not_news(lab: LabPlan) -> None:
    states = {n.name: gossip_state(n) for n in lab.nodes}
    watched = set()
    for name, state in states.items():
        assert len(state["watching"]) == 2
        assert name not in state["watching"]
        watched |= set(state["watching"])
    assert watched == {n.name for n in lab.nodes}  # everyone has a watcher
    before = {name: state["heartbeats"] for name, state in states.items()}

    def beats_went_on() -> bool:  # a few intervals' heartbeats from every node
        return all(
            gossip_state(n)["heartbeats"]["sent"] >= before[n.name]["sent"] + 4 for n in lab.nodes
        )

    wait_for(beats_went_on, timeout=30, what="every node to send four more heartbeats")
    for node in lab.nodes:
        counts = gossip_state(node)["heartbeats"]
        # No state changes with a heartbeat: news only when something changed. All five
        # agents share this host's memory, so a guest of another test ending can move free
        # memory by a GiB (news from every member, once); nothing else moves when idle.
        assert counts["news"] - before[node.name]["news"] <= len(lab.nodes), node.name
        assert counts["declared"] == before[node.name]["declared"], node.name
        # A whole view only to repair a view that news left behind (such as one a memory
        # change was still crossing), never with every heartbeat.
        views = counts["views_sent"] - before[node.name]["views_sent"]
        assert views <= len(lab.nodes), node.name


def test_a_killed_agent_is_offline_everywhere_within_the_configured_time(lab: LabPlan) -> None:
    victim, others = lab.nodes[-1], lab.nodes[:-1]
    pid = agents.agent_pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    seen_at: dict[str, float] = {}

    def everyone_knows() -> bool:
        for node in others:
            if node.name not in seen_at and victim.name in offline_seen(node):
                seen_at[node.name] = time.monotonic() - killed
        return len(seen_at) == len(others)

    wait_for(everyone_knows, timeout=30, what=f"every node to show {victim.name} offline")
    # Within the configured time (what `node list` shows is polled, one node after another:
    # allow for one round of polling).
    assert max(seen_at.values()) <= agents.OFFLINE_AFTER + 1.5, seen_at
    assert everyone_sees(lab, {victim.name}, others)  # and no one else
    declared = sum(gossip_state(n)["heartbeats"]["declared"] for n in others)
    assert declared >= 1  # by its watchers, not by each node's clock
    agents.start_agent(lab, victim)
    wait_for(lambda: everyone_sees(lab, set()), timeout=30, what="the restarted node online")


def test_a_node_cut_off_from_everyone_is_out_and_back_without_blaming_others(
    lab: LabPlan,
) -> None:
    cut, others = lab.nodes[1], [n for n in lab.nodes if n is not lab.nodes[1]]
    routes = [f"{n.migration_address.ip}/32" for n in others]
    for route in routes:
        run(netns.in_netns(cut.netns, ["ip", "route", "add", "blackhole", route]))
    try:
        wait_for(
            lambda: offline_seen(cut) == {n.name for n in others},
            timeout=30,
            what=f"{cut.name} to show every peer offline",
        )
        wait_for(
            lambda: everyone_sees(lab, {cut.name}, others),
            timeout=30,
            what=f"every other node to show {cut.name} (and only it) offline",
        )
        assert everyone_sees(lab, {cut.name}, others)
    finally:
        for route in routes:
            run(netns.in_netns(cut.netns, ["ip", "route", "del", "blackhole", route]))
    seen: dict[str, set[str]] = {}

    def all_back() -> bool:
        seen.update({n.name: offline_seen(n) for n in lab.nodes})
        return not any(seen.values())

    try:
        wait_for(all_back, timeout=30, what="every node online again")
    except WaitTimeout:
        states = {n.name: gossip_state(n) for n in lab.nodes}
        pytest.fail(f"still shown offline: {seen}; gossip: {states}")
