"""What recovery does, as a pure decision table: from what runs on the source and what the
target says runs there, a plan; `recovery.py` carries it out. The VM ends on exactly one
node, or recovery leaves things as they are and says why.

| source's copy       | the target's       | where   | what is done                          |
|---------------------|--------------------|---------|---------------------------------------|
| running             | running            | both    | source's paused; the operator chooses |
| not running         | running            | target  | source's stopped and unrecorded       |
| not running         | (no answer)        | unknown | nothing: it may run there             |
| running             | (no answer)        | source  | recorded running here                 |
| running             | not running        | source  | target's discarded                    |
| paused or migrated  | not running        | source  | target's discarded, source resumed    |
| stopped             | not running        | nowhere | target's discarded, recorded stopped  |

Both running means two copies write to the same disks: no copy is the right one by rule, so
recovery pauses the source's copy at once (one writer stops, its state is kept) and leaves
the choice to the operator, who kills the copy to drop and runs recovery again. Ganeti
refuses and asks too; killing one silently could destroy the copy the operator would keep.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from corral.hypervisors.base import RunState


class Where(StrEnum):
    SOURCE = "source"
    TARGET = "target"
    NOWHERE = "nowhere"
    UNKNOWN = "unknown"
    BOTH = "both"


# A copy the source holds but does not run: resumable (paused, or sent away at switchover).
HELD = frozenset({RunState.PAUSED, RunState.MIGRATED})


@dataclass(frozen=True)
class RecoveryPlan:
    where: Where
    stop_source: bool = False  # kill, unrecord and undefine the source's copy
    adopt_on_target: bool = False  # record the VM on the target (it runs unrecorded there)
    discard_target: bool = False  # stop the target's copy that is not running
    resume_source: bool = False  # make the source's held copy run again
    pause_source: bool = False  # stop the source's copy writing, keep its state
    record_source: RunState | None = None  # what the source's record says afterwards


def plan_recovery(
    source: RunState, target: RunState | None, target_recorded: bool = False
) -> RecoveryPlan:
    """The plan for a VM whose copy on the source is `source` and on the target `target`
    (None: the target did not answer); `target_recorded`: the target has a record of it."""
    if target == RunState.RUNNING:
        if source == RunState.RUNNING:
            return RecoveryPlan(Where.BOTH, pause_source=True)
        return RecoveryPlan(Where.TARGET, stop_source=True, adopt_on_target=not target_recorded)
    if target is None:
        if source == RunState.RUNNING:
            return RecoveryPlan(Where.SOURCE, record_source=RunState.RUNNING)
        return RecoveryPlan(Where.UNKNOWN)
    discard = target != RunState.STOPPED
    if source == RunState.RUNNING:
        return RecoveryPlan(Where.SOURCE, discard_target=discard, record_source=RunState.RUNNING)
    if source in HELD:
        return RecoveryPlan(
            Where.SOURCE,
            discard_target=discard,
            resume_source=True,
            record_source=RunState.RUNNING,
        )
    return RecoveryPlan(Where.NOWHERE, discard_target=discard, record_source=RunState.STOPPED)
