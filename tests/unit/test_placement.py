"""Placement (`corral migrate VM` without a node): every other member judged by preflight,
the most free memory after placing first, then the fewest VMs; every reason kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from corral.agent.settings import AgentSettings
from corral.hypervisors.base import MigrationState as M
from corral.migration.options import MigrationOptions
from corral.migration.placement import Candidate, candidate, creation_reasons, rank
from corral.migration.preflight import NodeView, PreflightReason
from corral.migration.source_checks import PreflightFailed
from tests.unit.test_orchestrator import FACTS, Rig, desk_of

REFUSED = (PreflightReason("memory", "too little", "x"),)


def test_most_free_memory_after_placing_wins_then_fewest_vms_then_name() -> None:
    ranked = rank(
        [
            Candidate("c", (), 1000, 5),
            Candidate("a", (), 4000, 9),
            Candidate("b", (), 4000, 2),
            Candidate("d", REFUSED, 9000, 0),
        ]
    )
    assert [c.node for c in ranked] == ["b", "a", "c", "d"]  # refused last, whatever its memory


def test_free_memory_after_placing_counts_the_vm_and_qemus_overhead() -> None:
    found = candidate("n", [], {"memory_free_mib": 2048, "vm_count": 3}, 512)
    assert found.free_after_mib == 2048 - 512 - 64
    assert found.vm_count == 3
    assert candidate("n", [], {}, 512).free_after_mib is None


def placing(tmp_path: Path, free: dict[str, int]) -> Rig:
    rig = Rig(tmp_path, [M.SETUP, M.COMPLETED])

    def view(name: str) -> NodeView:
        return NodeView(name, {**FACTS, "memory_free_mib": free[name], "vm_count": 1})

    rig.services = replace(rig.services, members=lambda: ["src", *free], target_view=view)
    return rig


def test_the_plan_ranks_every_member_and_plans_for_the_best(tmp_path: Path) -> None:
    rig = placing(tmp_path, {"big": 4096, "small": 1024, "tiny": 100})
    answer = desk_of(rig, {}).plan(MigrationOptions(vm="vm1", target="auto"))
    assert answer["target"] == "big"
    assert answer["allowed"]
    ranking: list[dict[str, Any]] = answer["ranking"]
    assert [c["node"] for c in ranking] == ["big", "small", "tiny"]
    assert [c["allowed"] for c in ranking] == [True, True, False]
    assert ranking[2]["reasons"][0]["code"] == "memory"  # the VM needs 64 + 64 MiB
    assert "estimate" in answer  # the plan for the chosen one


def test_start_without_a_target_moves_to_the_best_member(tmp_path: Path) -> None:
    rig = placing(tmp_path, {"big": 4096, "small": 1024})
    started = desk_of(rig, {}).start(MigrationOptions(vm="vm1", target="auto"), "cli@src")
    assert started["target"] == "big"
    assert started["task"]["args"]["options"]["target"] == "big"


def test_no_member_that_passes_refuses_with_every_members_reasons(tmp_path: Path) -> None:
    rig = placing(tmp_path, {"a": 10, "b": 20})
    with pytest.raises(PreflightFailed) as refused:
        desk_of(rig, {}).start(MigrationOptions(vm="vm1", target="auto"), "cli@src")
    assert [r["node"] for r in refused.value.details] == ["a", "b"]  # type: ignore[attr-defined]
    alone = placing(tmp_path / "alone", {})
    with pytest.raises(PreflightFailed, match="no-target"):
        desk_of(alone, {}).start(MigrationOptions(vm="vm1", target="auto"), "cli@src")


def test_no_node_may_be_named_auto() -> None:
    with pytest.raises(ValueError, match="let corral choose a node"):
        AgentSettings(node_name="auto")


def test_a_new_vm_goes_where_it_fits_with_its_bridges_and_machine_type() -> None:
    facts = {
        "memory_free_mib": 4096,
        "bridges": ["br0"],
        "machine_types": ["pc-q35-7.2"],
        "vm_count": 1,
    }

    def judged(name: str, **changes: Any) -> Candidate:
        online = changes.pop("online", True)
        draining = changes.pop("draining", False)
        mine = {**facts, **changes}
        reasons = creation_reasons(
            name,
            mine,
            online=online,
            draining=draining,
            memory_mib=512,
            bridges=["br0"],
            machine="pc-q35-7.2",
        )
        return candidate(name, reasons, mine, 512)

    ranked = rank(
        [
            judged("roomy", memory_free_mib=8192),
            judged("busy", vm_count=9),
            judged("down", online=False),
            judged("drained", draining=True),
            judged("nobridge", bridges=[]),
            judged("old", machine_types=["pc-q35-6.2"]),
            judged("full", memory_free_mib=500),
        ]
    )
    assert [c.node for c in ranked if c.allowed] == ["roomy", "busy"]
    codes = {c.node: [r.code for r in c.reasons] for c in ranked if not c.allowed}
    assert codes == {
        "down": ["target-offline"],
        "drained": ["target-draining"],
        "nobridge": ["bridge"],
        "old": ["machine-type"],
        "full": ["memory"],
    }


def test_a_start_judged_a_moment_ago_asks_the_target_once(tmp_path: Path) -> None:
    """A drain picks its target by the same preflight; its start does not ask again."""
    rig = placing(tmp_path, {"big": 4096})
    asked: list[str] = []
    view = rig.services.target_view

    def counted(name: str) -> NodeView | None:
        asked.append(name)
        return view(name)

    rig.services = replace(rig.services, target_view=counted)
    desk = desk_of(rig, {})
    desk.start(MigrationOptions(vm="vm1", target="big"), "cli@src")
    assert asked == ["big"]  # the ordinary start: its preflight
    asked.clear()
    rig.services.vms.release_hold("vm1", rig.services.journal.recent(1)[0].id)
    judged = desk_of(rig, {}).start(
        MigrationOptions(vm="vm1", target="big"), "drain", parent="t1", judged=True
    )
    assert asked == []
    assert judged["task"]["args"]["parent"] == "t1"
