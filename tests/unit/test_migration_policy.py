"""The convergence policy, driven with scripted samples: no QEMU, no mocks."""

from __future__ import annotations

import pytest

from corral.hypervisors.base import MigrationState, MigrationStatus
from corral.migration.policy import (
    Abort,
    EngageAutoConverge,
    ForceComplete,
    OnTimeout,
    PolicyLimits,
    PolicyState,
    RaiseDowntime,
    StartPostcopy,
    completion_timeout,
    converges,
    decide,
    downtime_steps,
    eta_seconds,
    initial_state,
)

GIB = 1024**3


def sample(
    iteration: int, remaining: int, elapsed_s: float = 1.0, state: str = "active"
) -> MigrationStatus:
    return MigrationStatus(
        state=MigrationState(state),
        elapsed_ms=int(elapsed_s * 1000),
        ram_total=GIB,
        ram_remaining=remaining,
        iterations=iteration,
        throughput_mbps=800.0,
    )


def run(limits: PolicyLimits, samples: list[MigrationStatus]) -> tuple[PolicyState, list[object]]:
    state, taken = initial_state(limits), list[object]()
    for s in samples:
        state, actions = decide(state, s, limits)
        taken += actions
    return state, taken


def stalled(iterations: range, remaining: int = 500_000_000) -> list[MigrationStatus]:
    return [sample(i, remaining) for i in iterations]


def test_downtime_steps_are_even_and_end_at_the_maximum() -> None:
    assert downtime_steps(300, 1000, 5) == [440, 580, 720, 860, 1000]
    assert downtime_steps(300, 300, 5) == []
    assert downtime_steps(500, 100, 3) == []


def test_completion_timeout_scales_with_ram_and_has_a_floor() -> None:
    assert completion_timeout(4 * GIB, 120) == 480
    assert completion_timeout(256 * 1024**2, 120) == 60


def test_progress_is_not_a_stall() -> None:
    shrinking = [sample(i, GIB // (i + 1)) for i in range(1, 12)]
    state, taken = run(PolicyLimits(), shrinking)
    assert taken == []
    assert state.stalls == 0


def test_a_stall_raises_the_downtime_limit_one_step() -> None:
    _, taken = run(PolicyLimits(), stalled(range(1, 5)))
    assert taken == [RaiseDowntime(440)]


def test_stalls_walk_the_steps_and_engage_auto_converge_after_n() -> None:
    limits = PolicyLimits(autoconverge_after=2)
    state, taken = run(limits, stalled(range(1, 40)))
    raises = [a.downtime_ms for a in taken if isinstance(a, RaiseDowntime)]
    assert raises == [440, 580, 720, 860, 1000]
    assert taken.count(EngageAutoConverge()) == 1
    assert taken.index(EngageAutoConverge()) == 2  # right after the second raise
    assert state.downtime_ms == 1000
    assert not any(isinstance(a, StartPostcopy) for a in taken)


def test_auto_converge_is_never_engaged_when_not_allowed() -> None:
    _, taken = run(PolicyLimits(auto_converge=False), stalled(range(1, 40)))
    assert EngageAutoConverge() not in taken


def test_post_copy_only_when_allowed_and_only_once_the_steps_are_spent() -> None:
    _, taken = run(PolicyLimits(allow_postcopy=True), stalled(range(1, 60)))
    postcopy = [i for i, a in enumerate(taken) if isinstance(a, StartPostcopy)]
    assert len(postcopy) == 1
    raises = [i for i, a in enumerate(taken) if isinstance(a, RaiseDowntime)]
    assert postcopy[0] > raises[-1]


def test_timeout_aborts_by_default() -> None:
    limits = PolicyLimits(completion_timeout_s=30)
    state, taken = run(limits, [sample(1, GIB, elapsed_s=31)])
    assert taken == [Abort("not complete after 30s")]
    assert state.timed_out
    _, again = decide(state, sample(2, GIB, elapsed_s=32), limits)
    assert again == []


def test_timeout_forces_completion_when_asked() -> None:
    limits = PolicyLimits(completion_timeout_s=30, on_timeout=OnTimeout.FORCE)
    _, taken = run(limits, [sample(1, GIB, elapsed_s=31)])
    assert taken == [ForceComplete("not complete after 30s")]


def test_forced_timeout_prefers_post_copy_when_allowed() -> None:
    limits = PolicyLimits(completion_timeout_s=30, on_timeout=OnTimeout.FORCE, allow_postcopy=True)
    _, taken = run(limits, [sample(1, GIB, elapsed_s=31)])
    assert taken == [StartPostcopy("not complete after 30s")]


@pytest.mark.parametrize("status", ["setup", "completed", "postcopy-active", "failed"])
def test_only_active_samples_are_judged(status: str) -> None:
    _, taken = run(
        PolicyLimits(completion_timeout_s=1),
        [sample(i, GIB, elapsed_s=5, state=status) for i in range(1, 20)],
    )
    assert taken == []


def test_convergence_estimate() -> None:
    ok, seconds = converges(GIB, 10 * 1024**2, 100 * 1024**2, 300)
    assert ok
    assert seconds is not None
    assert 10 < seconds < 12
    assert converges(GIB, 100 * 1024**2, 100 * 1024**2, 300) == (False, None)
    assert converges(GIB, 0, 0, 300) == (False, None)


def test_eta_from_throughput() -> None:
    assert eta_seconds(
        MigrationStatus(MigrationState.ACTIVE, ram_remaining=100_000_000, throughput_mbps=800)
    ) == pytest.approx(1.0)
    assert eta_seconds(MigrationStatus(MigrationState.ACTIVE)) is None


def test_every_qemu_migration_status_has_corral_name() -> None:
    from corral.hypervisors.base import MigrationState
    from corral.hypervisors.qemu.migration import QEMU_STATES, migration_state

    # QEMU 7.2's MigrationStatus enum (qapi/migration.json).
    qemu = [
        "none",
        "setup",
        "cancelling",
        "cancelled",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "completed",
        "failed",
        "colo",
        "pre-switchover",
        "device",
        "wait-unplug",
    ]
    assert set(qemu) <= set(QEMU_STATES)
    assert migration_state("device") == MigrationState.ACTIVE
    assert migration_state("postcopy-paused") == MigrationState.POSTCOPY
    assert migration_state("something-new") == MigrationState.FAILED
    assert {s for s in MigrationState if s.finished} == {
        MigrationState.COMPLETED,
        MigrationState.FAILED,
        MigrationState.CANCELLED,
    }
