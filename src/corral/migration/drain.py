"""A drain: empty a node for maintenance. It runs as a task on the node being drained and
starts one migration task per running VM (its child tasks), a few at once:

1. the node is marked draining (cluster/maintenance.py): nothing is placed there from now on;
2. each stopped VM whose storage the chosen node shares is re-homed (its owner changes,
   nothing is copied); one that cannot move stays, with its reasons;
3. each running VM is placed as `corral migrate VM` places it, counting the VMs already
   moving, and live-migrated under the limits of migration/drain_plan.py; a VM whose
   migration fails (it rolled back: it runs here) is placed again without that node, or
   stays with every reason;
4. the drain ends `drained`, or `partially drained` (a failure naming every VM that stayed).

Its progress record (`vms`) says where each VM stands, so a drain run again after an agent
restart resumes from it: VMs moved stay moved, a migration that was in flight is judged by
where its VM is now. Cancelled, it starts nothing new; migrations in flight finish (or roll
back) on their own. The node stays draining until `corral node undrain`.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import CorralError
from corral.migration.drain_plan import DrainLimits, Moving, for_stopped, pick_target
from corral.migration.placement import Candidate
from corral.migration.preflight import PreflightReason
from corral.tasks.runner import TaskCancelled, TaskContext, TaskSuspended
from corral.tasks.states import TaskState

POLL_S = 0.5  # the longest wait for a change of its migrations (it wakes at each change)
# How often it places again when none of its migrations ended (others' may have: every
# attempt asks each member for its migrations, and preflight of every queued VM).
RETRY_S = 2.0
SETTLE_S = 60.0  # how long a VM found mid-move after a restart is given to settle
SETTLE_POLL_S = 2.0
AHEAD_S = 5.0  # a placement made ahead (while every slot is busy) serves this long
MOVED, REHOMED, STAYED, MOVING, WAITING = "moved", "rehomed", "stayed", "moving", "waiting"
FINAL = {MOVED, REHOMED, STAYED}


class DrainOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    parallel: int = Field(2, ge=1, le=32, description="migrations at once, cluster-wide")
    per_node: int = Field(1, ge=1, le=32, description="at once into or out of any other node")
    bandwidth_mib: int = Field(0, ge=0, le=1024 * 1024, description="per migration; 0: no cap")
    with_local_disks: bool = Field(False, description="copy the disks a target does not share")

    @property
    def limits(self) -> DrainLimits:
        return DrainLimits(self.parallel, self.per_node)


class DrainIncomplete(CorralError):
    """The drain ended with VMs still on the node (each named with its reasons)."""


@dataclass(frozen=True)
class OwnedVm:
    name: str
    observed: str  # running, stopped, paused, ...
    memory_mib: int


@dataclass(frozen=True)
class ChildState:
    state: TaskState
    result: dict[str, Any] | None
    error: str | None


@dataclass
class DrainServices:
    """What a drain needs from its node, injected (tests script it)."""

    node: str
    owned: Callable[[], list[OwnedVm]]  # the VMs this node owns now
    # Every other member judged as a live-migration target for a VM, ranked (the options
    # say whether local disks may be copied).
    ranking: Callable[[str, DrainOptions], list[Candidate]]
    start: Callable[[str, str, DrainOptions], str]  # (vm, target, options) -> child task id
    rehome: Callable[[str, str], None]  # (stopped vm, target)
    child: Callable[[str], ChildState]
    moving: Callable[[set[str]], Moving]  # the cluster's migrations but these child tasks
    # Ask both nodes of a VM's last migration where it runs and repair the records
    # (`corral migrate --recover`): for a VM found mid-move after a restart.
    recover: Callable[[str], None] = lambda _vm: None
    version: Callable[[str], int] = lambda _task: 0  # a child task's change number
    # Until one of these child tasks is past its change number, or the timeout.
    wait: Callable[[dict[str, int], float], None] = lambda _seen, seconds: time.sleep(seconds)


@dataclass
class Entry:
    vm: str
    state: str
    target: str | None = None
    task: str | None = None
    bytes: int = 0
    memory_mib: int = 0
    reasons: tuple[dict[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "target": self.target,
            "task": self.task,
            "bytes": self.bytes,
            "memory_mib": self.memory_mib,
            "reasons": list(self.reasons),
        }


def _reasons(
    reasons: tuple[PreflightReason, ...] | list[PreflightReason],
) -> tuple[dict[str, str], ...]:
    return tuple(r.to_json() for r in reasons)


def moved_bytes(result: dict[str, Any] | None) -> int:
    """What a finished migration sent: its RAM stream and its copied disks."""
    result = result or {}
    sent = result.get("bytes_sent") or 0
    disks = (result.get("disks") or {}).get("data_bytes") or 0
    return int(sent) + int(disks)


class Drain:
    """One run of a drain task (a re-run after a restart resumes from its progress)."""

    def __init__(self, services: DrainServices, ctx: TaskContext, opts: DrainOptions) -> None:
        self.services = services
        self.ctx = ctx
        self.opts = opts
        self.entries: dict[str, Entry] = {}
        self.queue: list[str] = []  # running VMs still to place, in order
        self.tried: dict[str, dict[str, str]] = {}  # vm -> {target: why its migration failed}
        self.started = time.monotonic()
        self.phase = "draining"
        self.changed = True  # a migration ended or a VM arrived: place again now
        self.ahead: dict[str, tuple[float, list[Candidate]]] = {}  # vm -> (when, ranking)
        self.published: dict[str, Any] = {}
        self.tried_at = 0.0

    # -- the whole drain -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._resume()
        for entry in [e for e in self.entries.values() if e.state == "stopped"]:
            self._rehome(entry)
        while True:
            self._check_stopping()
            cancelling = self.ctx.cancel_requested
            if cancelling:
                self.phase = "cancelling: waiting for the migrations in flight"
            elif self.changed or time.monotonic() - self.tried_at >= RETRY_S:
                self._start_what_fits()
                self.changed, self.tried_at = False, time.monotonic()
            self._publish()
            if not cancelling:
                self._rank_ahead()
            if not self._in_flight() and (cancelling or not self.queue):
                if cancelling or not self._arrivals():
                    break
                continue
            seen = {e.task: self.services.version(e.task) for e in self._in_flight() if e.task}
            if not self._collect():  # nothing ended: wait for the next change
                self.services.wait(seen, POLL_S)
        return self._finish(cancelled=self.ctx.cancel_requested)

    def _resume(self) -> None:
        """Entries from the last run's progress, and every VM this node owns now."""
        before = self.ctx.task.progress.get("vms", {})
        owned = self._settled(
            {vm.name: vm for vm in self.services.owned()},
            {name for name, old in before.items() if old.get("state") == MOVING},
        )
        for name, old in before.items():
            entry = Entry(name, **{**old, "reasons": tuple(old.get("reasons", ()))})
            if entry.state in (MOVED, REHOMED):
                self.entries[name] = entry  # done in an earlier run
            elif entry.state == MOVING and name not in owned:
                # In flight when the agent stopped, and it arrived (its recovery said so).
                entry.state = MOVED
                entry.bytes = self._bytes_of(entry.task) if entry.task else 0
                self.entries[name] = entry
        for vm in owned.values():
            if vm.name in self.entries:
                continue
            entry = Entry(vm.name, WAITING, memory_mib=vm.memory_mib)
            if vm.observed == "running":
                self.queue.append(vm.name)
            elif vm.observed == "stopped":
                entry.state = "stopped"
            else:
                entry.state = STAYED
                entry.reasons = (
                    {
                        "code": "vm-state",
                        "message": f"VM {vm.name} is {vm.observed}: a drain live-migrates"
                        " running VMs and re-homes stopped ones",
                        "node": self.services.node,
                    },
                )
            self.entries[vm.name] = entry
        self._publish()

    def _settled(self, owned: dict[str, OwnedVm], moving: set[str]) -> dict[str, OwnedVm]:
        """`owned`, with each VM the last run was moving and that is neither running nor
        stopped now (its migration went on in the hypervisor while the agent was down: the
        source's copy is `migrated`) recovered first, then asked again."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            unsettled = [
                name
                for name in moving
                if name in owned and owned[name].observed not in ("running", "stopped")
            ]
            if not unsettled or time.monotonic() >= deadline:
                return owned
            for name in unsettled:
                self.ctx.log(f"{name} is {owned[name].observed} after the restart: recovering it")
                try:
                    self.services.recover(name)
                except CorralError as exc:
                    self.ctx.log(f"the recovery of {name} failed: {exc}")
            owned = {vm.name: vm for vm in self.services.owned()}
            if any(n in owned and owned[n].observed not in ("running", "stopped") for n in moving):
                self.services.wait({}, SETTLE_POLL_S)

    def _arrivals(self) -> bool:
        """Queue the running VMs that arrived here during the drain (a migration accepted
        just before the node was marked draining); True when there are any."""
        new = [
            vm
            for vm in self.services.owned()
            if vm.observed == "running"
            and (vm.name not in self.entries or self.entries[vm.name].state in (MOVED, REHOMED))
        ]
        for vm in new:
            self.ctx.log(f"{vm.name} arrived during the drain: it is moved too")
            self.entries[vm.name] = Entry(vm.name, WAITING, memory_mib=vm.memory_mib)
            self.queue.append(vm.name)
        self.changed = self.changed or bool(new)
        return bool(new)

    def _bytes_of(self, task_id: str) -> int:
        try:
            return moved_bytes(self.services.child(task_id).result)
        except CorralError:
            return 0

    # -- stopped VMs -----------------------------------------------------------------------

    def _rehome(self, entry: Entry) -> None:
        if self.ctx.cancel_requested:
            entry.state = STAYED
            entry.reasons = (
                {
                    "code": "cancelled",
                    "message": "the drain was cancelled",
                    "node": self.services.node,
                },
            )
            return
        ranked = for_stopped(self.services.ranking(entry.vm, DrainOptions()))
        pick = pick_target(entry.vm, ranked, Moving(), DrainLimits(1, 1), {})
        if pick.target is None:
            entry.state, entry.reasons = STAYED, _reasons(pick.reasons)
            self.ctx.log(f"{entry.vm} (stopped) stays: {self._why(entry)}")
            return
        try:
            self.services.rehome(entry.vm, pick.target)
        except CorralError as exc:
            entry.state = STAYED
            entry.reasons = (
                {"code": "rehome-failed", "message": exc.message, "node": pick.target},
            )
            self.ctx.log(f"{entry.vm} (stopped) stays: re-homing to {pick.target} failed: {exc}")
            return
        entry.state, entry.target = REHOMED, pick.target
        self.ctx.log(f"{entry.vm} (stopped) re-homed to {pick.target}")
        self._publish()

    # -- running VMs -----------------------------------------------------------------------

    def _in_flight(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.state == MOVING]

    def _moving(self) -> Moving:
        flying = self._in_flight()
        moving = self.services.moving({e.task for e in flying if e.task})
        for entry in flying:
            assert entry.target is not None
            moving.add(entry.target, entry.memory_mib)
        return moving

    def _start_what_fits(self) -> None:
        limits = self.opts.limits
        moving = self._moving()
        for name in list(self.queue):
            if moving.total >= limits.parallel:
                return
            entry = self.entries[name]
            tried = self.tried.get(name, {})
            pick = pick_target(name, self._ranked(name), moving, limits, tried)
            if pick.wait:
                continue
            self.queue.remove(name)
            if pick.target is None:
                entry.state, entry.reasons = STAYED, _reasons(pick.reasons)
                self.ctx.log(f"{name} stays: {self._why(entry)}")
                continue
            try:
                task = self.services.start(name, pick.target, self.opts)
            except CorralError as exc:  # refused at the start (preflight, held, ...)
                self.tried.setdefault(name, {})[pick.target] = exc.message
                self.queue.append(name)
                self.ctx.log(f"{name}: the migration to {pick.target} was refused: {exc}")
                continue
            entry.state, entry.target, entry.task = MOVING, pick.target, task
            moving.add(pick.target, entry.memory_mib)
            self.ctx.log(f"{name}: migrating to {pick.target} (task {task})")

    def _ranked(self, name: str) -> list[Candidate]:
        """Every other member judged for `name`: the ranking made ahead if it is fresh."""
        ahead = self.ahead.pop(name, None)
        if ahead is not None and time.monotonic() - ahead[0] < AHEAD_S:
            return ahead[1]
        return self.services.ranking(name, self.opts)

    def _rank_ahead(self) -> None:
        """While migrations run, judge the next VM's targets, so that when one ends its
        successor starts without waiting for a preflight of every member (the counting of
        what moves, and the limits, are applied then, on the numbers of that moment)."""
        if not self.queue or not self._in_flight():
            return
        name = self.queue[0]
        made = self.ahead.get(name)
        if made is None or time.monotonic() - made[0] >= AHEAD_S:
            self.ahead[name] = (time.monotonic(), self.services.ranking(name, self.opts))

    def _collect(self) -> bool:
        """Take in the migrations that ended; True when one did."""
        ended = False
        for entry in self._in_flight():
            assert entry.task is not None
            assert entry.target is not None
            child = self.services.child(entry.task)
            if not child.state.finished:
                continue
            self.changed = ended = True
            if child.state == TaskState.SUCCEEDED:
                entry.state, entry.bytes = MOVED, moved_bytes(child.result)
                self.ctx.log(f"{entry.vm}: moved to {entry.target}")
                continue
            why = child.error or child.state.value
            self.ctx.log(f"{entry.vm}: the migration to {entry.target} {child.state}: {why}")
            self.tried.setdefault(entry.vm, {})[entry.target] = why
            entry.state, entry.task = WAITING, None
            if self.ctx.cancel_requested:
                entry.state = STAYED
                entry.reasons = (
                    {"code": "migration-failed", "message": why, "node": entry.target},
                )
            else:
                self.queue.append(entry.vm)  # placed again, without that node
        return ended

    # -- the record ------------------------------------------------------------------------

    def _check_stopping(self) -> None:
        if self.ctx.stopping():
            self.phase = "suspended: the agent is stopping; it resumes at its next start"
            self._publish()
            raise TaskSuspended()

    @staticmethod
    def _why(entry: Entry) -> str:
        return "; ".join(f"[{r['code']}] {r['message']}" for r in entry.reasons)

    def _publish(self) -> None:
        """The progress record, written when it changed."""
        entries = self.entries.values()
        done = sum(1 for e in entries if e.state in FINAL)
        moving = [e.vm for e in entries if e.state == MOVING]
        record = {
            "phase": self.phase,
            "done": done,
            "total": len(self.entries),
            "unit": "VMs",
            "bytes": sum(e.bytes for e in entries),
            "message": ("moving " + ", ".join(moving)) if moving else "",
            "vms": {e.vm: e.to_json() for e in self.entries.values()},
        }
        if record != self.published:
            self.ctx.progress(**record)
            self.published = record

    def _finish(self, *, cancelled: bool) -> dict[str, Any]:
        for name in self.queue:
            entry = self.entries[name]
            entry.state = STAYED
            entry.reasons = (
                {
                    "code": "cancelled",
                    "message": "the drain was cancelled before it moved this VM",
                    "node": self.services.node,
                },
            )
        self.queue.clear()
        stayed = [e for e in self.entries.values() if e.state == STAYED]
        outcome = "cancelled" if cancelled else ("partially drained" if stayed else "drained")
        self.phase = outcome
        self._publish()
        if cancelled:
            raise TaskCancelled()
        node = self.services.node
        if stayed:
            listed = "; ".join(f"{e.vm}: {self._why(e)}" for e in stayed)
            raise DrainIncomplete(
                f"{node} partially drained: {len(stayed)} of {len(self.entries)} VM(s) stay on"
                f" it ({listed})"
            )
        entries = self.entries.values()
        return {
            "outcome": outcome,
            "node": node,
            "moved": sorted(e.vm for e in entries if e.state == MOVED),
            "rehomed": sorted(e.vm for e in entries if e.state == REHOMED),
            "stayed": [],
            "targets": {e.vm: e.target for e in entries},
            "bytes": sum(e.bytes for e in entries),
            "total_s": round(time.monotonic() - self.started, 3),
        }


def run_drain(services: DrainServices, ctx: TaskContext) -> dict[str, Any]:
    return Drain(services, ctx, DrainOptions.model_validate(ctx.args.get("options", {}))).run()
