"""wait_for polls a condition against an injected clock; it never sleeps a fixed time."""

from __future__ import annotations

import pytest

from corral.waiting import WaitTimeout, wait_for


class ScriptedClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_result() -> None:
    clock = ScriptedClock()
    values = iter([None, False, "ready"])
    assert (
        wait_for(lambda: next(values), timeout=5, what="x", clock=clock, sleep=clock.sleep)
        == "ready"
    )
    assert len(clock.sleeps) == 2


def test_times_out_naming_what_was_awaited() -> None:
    clock = ScriptedClock()
    with pytest.raises(WaitTimeout, match="the guest to boot"):
        wait_for(
            lambda: None,
            timeout=1.0,
            what="the guest to boot",
            interval=0.25,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == pytest.approx(1.0)
