"""Recovery's decision table, row by row, and the rules no row may break: the VM ends on
one node or is left alone, and the source never resumes while the target runs it."""

from __future__ import annotations

import itertools

import pytest

from corral.hypervisors.base import RunState as S
from corral.migration.recovery_plan import RecoveryPlan, Where, plan_recovery

NO_ANSWER = None

ROWS = [
    # source, target, target recorded, expected plan
    (S.RUNNING, S.RUNNING, True, RecoveryPlan(Where.BOTH, pause_source=True)),
    (
        S.MIGRATED,
        S.RUNNING,
        False,
        RecoveryPlan(Where.TARGET, stop_source=True, adopt_on_target=True),
    ),
    (S.MIGRATED, S.RUNNING, True, RecoveryPlan(Where.TARGET, stop_source=True)),
    (S.STOPPED, S.RUNNING, True, RecoveryPlan(Where.TARGET, stop_source=True)),
    (S.PAUSED, NO_ANSWER, False, RecoveryPlan(Where.UNKNOWN)),
    (S.MIGRATED, NO_ANSWER, False, RecoveryPlan(Where.UNKNOWN)),
    (S.STOPPED, NO_ANSWER, False, RecoveryPlan(Where.UNKNOWN)),
    (S.RUNNING, NO_ANSWER, False, RecoveryPlan(Where.SOURCE, record_source=S.RUNNING)),
    (S.RUNNING, S.STOPPED, False, RecoveryPlan(Where.SOURCE, record_source=S.RUNNING)),
    (
        S.RUNNING,
        S.INCOMING,
        False,
        RecoveryPlan(Where.SOURCE, discard_target=True, record_source=S.RUNNING),
    ),
    (
        S.MIGRATED,
        S.PAUSED,
        False,
        RecoveryPlan(
            Where.SOURCE, discard_target=True, resume_source=True, record_source=S.RUNNING
        ),
    ),
    (
        S.PAUSED,
        S.STOPPED,
        False,
        RecoveryPlan(Where.SOURCE, resume_source=True, record_source=S.RUNNING),
    ),
    (S.STOPPED, S.STOPPED, False, RecoveryPlan(Where.NOWHERE, record_source=S.STOPPED)),
    (
        S.STOPPED,
        S.INCOMING,
        False,
        RecoveryPlan(Where.NOWHERE, discard_target=True, record_source=S.STOPPED),
    ),
]


@pytest.mark.parametrize(("source", "target", "recorded", "plan"), ROWS)
def test_the_table(source: S, target: S | None, recorded: bool, plan: RecoveryPlan) -> None:
    assert plan_recovery(source, target, recorded) == plan


@pytest.mark.parametrize(
    ("source", "target", "recorded"),
    list(itertools.product(list(S), [*S, NO_ANSWER], [False, True])),
)
def test_no_row_breaks_the_rules(source: S, target: S | None, recorded: bool) -> None:
    plan = plan_recovery(source, target, recorded)
    if target == S.RUNNING:
        assert not plan.resume_source  # never a second running copy
        assert not plan.discard_target  # never stop the copy that runs
    if plan.where == Where.UNKNOWN:
        assert plan == RecoveryPlan(Where.UNKNOWN)  # not knowing, it touches nothing
    if plan.stop_source:
        assert plan.where == Where.TARGET
    if plan.resume_source:
        assert source in (S.PAUSED, S.MIGRATED)
        assert target is not None
    assert not (plan.stop_source and plan.pause_source)
