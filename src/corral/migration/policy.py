"""Convergence policy: pure functions of observed numbers, tested without QEMU.

The orchestrator feeds each `MigrationStatus` sample to `decide`, which returns the new
policy state and the actions to take:

- the remaining RAM stops shrinking (no 5 % progress within `stall_iterations` dirty-sync
  iterations): a *stall*; each stall raises the downtime limit one step towards the maximum;
- after `autoconverge_after` stalls, auto-converge is engaged (QEMU cannot switch the
  capability on mid-migration, so it is armed at the start with its trigger at 100 %, i.e.
  quiet, and engaging it lowers the trigger to QEMU's default of 50 %);
- once the downtime steps are spent and it still stalls, post-copy starts, if allowed;
- when the completion timeout passes: abort (default) or force completion (post-copy if
  allowed, else pause the source so the rest copies without new dirt).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from corral.hypervisors.base import MigrationState, MigrationStatus

PROGRESS_FRACTION = 0.95  # remaining must fall below 95 % of the best seen to count


class OnTimeout(StrEnum):
    ABORT = "abort"
    FORCE = "force"


@dataclass(frozen=True)
class PolicyLimits:
    initial_downtime_ms: int = 300
    max_downtime_ms: int = 1000
    downtime_steps: int = 5
    stall_iterations: int = 3
    autoconverge_after: int = 2
    auto_converge: bool = True
    allow_postcopy: bool = False
    completion_timeout_s: float = 600.0
    on_timeout: OnTimeout = OnTimeout.ABORT


@dataclass(frozen=True)
class RaiseDowntime:
    downtime_ms: int


@dataclass(frozen=True)
class EngageAutoConverge:
    pass


@dataclass(frozen=True)
class StartPostcopy:
    reason: str


@dataclass(frozen=True)
class Abort:
    reason: str


@dataclass(frozen=True)
class ForceComplete:
    reason: str


Action = RaiseDowntime | EngageAutoConverge | StartPostcopy | Abort | ForceComplete


@dataclass(frozen=True)
class PolicyState:
    downtime_ms: int
    step: int = 0
    best_remaining: int | None = None
    window_start: int = 0  # the iteration from which progress is awaited
    stalls: int = 0
    autoconverge_engaged: bool = False
    postcopy_started: bool = False
    timed_out: bool = False


def initial_state(limits: PolicyLimits) -> PolicyState:
    return PolicyState(downtime_ms=limits.initial_downtime_ms)


def downtime_steps(initial_ms: int, maximum_ms: int, steps: int) -> list[int]:
    """The downtime limits to try after the initial one, evenly spaced up to the maximum."""
    if maximum_ms <= initial_ms or steps <= 0:
        return []
    return [initial_ms + (maximum_ms - initial_ms) * i // steps for i in range(1, steps + 1)]


def completion_timeout(ram_bytes: int, seconds_per_gib: float, minimum_s: float = 60.0) -> float:
    """The completion timeout of a VM of `ram_bytes`: `seconds_per_gib` per GiB, at least
    `minimum_s`."""
    return max(minimum_s, seconds_per_gib * ram_bytes / 1024**3)


def _on_timeout(state: PolicyState, limits: PolicyLimits) -> tuple[PolicyState, list[Action]]:
    timed_out = replace(state, timed_out=True)
    why = f"not complete after {limits.completion_timeout_s:g}s"
    if limits.on_timeout == OnTimeout.ABORT:
        return timed_out, [Abort(why)]
    if limits.allow_postcopy and not state.postcopy_started:
        return replace(timed_out, postcopy_started=True), [StartPostcopy(why)]
    return timed_out, [ForceComplete(why)]


def decide(
    state: PolicyState, sample: MigrationStatus, limits: PolicyLimits
) -> tuple[PolicyState, list[Action]]:
    """The policy's answer to one sample: a new state and the actions to take now."""
    if sample.state != MigrationState.ACTIVE or state.timed_out:
        return state, []
    if sample.elapsed_ms / 1000 >= limits.completion_timeout_s:
        return _on_timeout(state, limits)
    if state.best_remaining is None or (
        sample.ram_remaining < state.best_remaining * PROGRESS_FRACTION
    ):
        return replace(
            state, best_remaining=sample.ram_remaining, window_start=sample.iterations
        ), []
    if sample.iterations - state.window_start < limits.stall_iterations:
        return state, []
    # A stall: no real progress for `stall_iterations` iterations.
    state = replace(
        state,
        stalls=state.stalls + 1,
        window_start=sample.iterations,
        best_remaining=sample.ram_remaining,
    )
    actions: list[Action] = []
    steps = downtime_steps(
        limits.initial_downtime_ms, limits.max_downtime_ms, limits.downtime_steps
    )
    if state.step < len(steps):
        state = replace(state, step=state.step + 1, downtime_ms=steps[state.step])
        actions.append(RaiseDowntime(state.downtime_ms))
    elif limits.allow_postcopy and not state.postcopy_started:
        state = replace(state, postcopy_started=True)
        actions.append(
            StartPostcopy(
                f"still not converging after {state.stalls} stalls at"
                f" the {state.downtime_ms} ms downtime limit"
            )
        )
    if (
        limits.auto_converge
        and not state.autoconverge_engaged
        and state.stalls >= limits.autoconverge_after
    ):
        state = replace(state, autoconverge_engaged=True)
        actions.append(EngageAutoConverge())
    return state, actions


def eta_seconds(sample: MigrationStatus) -> float | None:
    """Seconds until the remaining RAM is sent at the current rate, if it can be told."""
    if sample.throughput_mbps <= 0:
        return None
    return sample.ram_remaining * 8 / (sample.throughput_mbps * 1_000_000)


def converges(
    ram_bytes: int, dirty_bytes_per_s: float, bandwidth_bytes_per_s: float, downtime_ms: int
) -> tuple[bool, float | None]:
    """Whether pre-copy converges under these numbers, and the expected time if it does.

    Each iteration resends what was dirtied during the previous one; it converges when what
    is left fits in the downtime (the geometric series of ratio dirty/bandwidth), and the
    last piece is sent with the guest paused."""
    if bandwidth_bytes_per_s <= 0:
        return False, None
    ratio = dirty_bytes_per_s / bandwidth_bytes_per_s
    final = bandwidth_bytes_per_s * downtime_ms / 1000
    remaining, total, rounds = float(ram_bytes), 0.0, 0
    while remaining > final:
        if ratio >= 1 or rounds > 60:
            return False, None
        duration = remaining / bandwidth_bytes_per_s
        total += duration
        remaining = dirty_bytes_per_s * duration
        rounds += 1
    return True, total + remaining / bandwidth_bytes_per_s
