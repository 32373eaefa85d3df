"""The task kinds every agent runs. Later layers (VMs, migration) add theirs here."""

from __future__ import annotations

import threading
from typing import Any

from corral.errors import UserInputError
from corral.tasks.runner import TaskContext, TaskKind


def _validate_sleep(args: dict[str, Any]) -> None:
    extra = set(args) - {"seconds", "steps"}
    if extra:
        raise UserInputError(f"args.{sorted(extra)[0]}", "unknown argument of a sleep task")
    seconds = args.get("seconds")
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not (0 <= seconds <= 86400)
    ):
        raise UserInputError("args.seconds", "a number of seconds between 0 and 86400")
    steps = args.get("steps", 10)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 10_000:
        raise UserInputError("args.steps", "an integer between 1 and 10000")


def run_sleep(ctx: TaskContext) -> dict[str, Any]:
    """Wait `seconds` in `steps`, reporting progress and logging each step; cancellable.
    A harmless task for checking that a node runs what others give it."""
    seconds = float(ctx.args["seconds"])
    steps = int(ctx.args.get("steps", 10))
    pause = threading.Event()
    for step in range(1, steps + 1):
        ctx.check_cancelled()
        ctx.progress(phase="sleeping", done=step - 1, total=steps, unit="steps")
        pause.wait(seconds / steps)
        ctx.log(f"step {step}/{steps}")
    ctx.progress(phase="done", done=steps, total=steps, unit="steps")
    return {"slept": seconds}


def builtin_kinds() -> dict[str, TaskKind]:
    kinds = [
        TaskKind(
            "sleep",
            run_sleep,
            idempotent=False,
            validate=_validate_sleep,
            description="wait N seconds in steps, with progress (for checks and tests)",
        ),
    ]
    return {k.name: k for k in kinds}
