"""The source side of a live migration (the migration task on the VM's owner), following
docs/migration.md: preflight, a deferred task on the target that listens, transfer under
the convergence policy, switchover, handoff, cleanup; and rollback that never loses or
doubles the VM. Every step is written to the journal before it is taken.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from corral.errors import ConflictError, CorralError
from corral.hypervisors.base import (
    MigrationState,
    MigrationStatus,
    MigrationTuning,
    RunState,
    VmLayout,
)
from corral.hypervisors.disk_copy_contract import DiskCopyStatus
from corral.migration import policy
from corral.migration.disk_phase import (
    DiskCopyRun,
    after_success,
    disk_timeout,
    plan_copy,
    progress_record,
    release_target,
)
from corral.migration.disk_placement import size_text
from corral.migration.journal import MigrationPhase
from corral.migration.options import MIB, MigrationOptions
from corral.migration.receive_args import ReceiveArgs
from corral.migration.recovery import held_back, recover_vm
from corral.migration.services import MigrationServices
from corral.migration.source_checks import PreflightFailed, check
from corral.migration.summary import summarize
from corral.model import VmSpec
from corral.tasks.runner import TaskCancelled, TaskContext
from corral.tasks.states import TaskState
from corral.waiting import wait_for

log = logging.getLogger(__name__)
DEST_READY_TIMEOUT = 60.0
DEST_FINISH_TIMEOUT = 60.0
SETTLE_TIMEOUT = 120.0  # how long to wait for a silent target after switchover
REPORT_INTERVAL = 0.1  # the transfer's progress record is rewritten at most this often


class MigrationFailed(CorralError):
    exit_code = 14


@dataclass
class SourceMigration:
    """One outgoing migration, driven step by step by `run`."""

    services: MigrationServices
    opts: MigrationOptions
    migration_id: str
    ctx: TaskContext
    preflight_passed: bool = False  # checked when the migration was asked for
    dest_task: str | None = None
    transfer_started: bool = False
    actions: list[str] = field(default_factory=list)
    disks: DiskCopyRun | None = None  # the local disks' copy, once planned
    resident_bytes: int | None = None  # what the host held of the guest's RAM at the start

    @property
    def vm(self) -> str:
        return self.opts.vm

    @property
    def _hypervisor(self) -> str:
        return self.services.driver.name

    def _step(self, phase: MigrationPhase, detail: str = "") -> None:
        self.services.journal.step(self.migration_id, phase, detail)
        self.ctx.log(f"{phase.value}: {detail}" if detail else phase.value)

    def _tuning(self, source: bool) -> MigrationTuning:
        tls_dir = None
        if not self.opts.insecure and self.services.tls is not None and source:
            t = self.services.tls
            layout = self.services.vms.layout(self.vm)
            tls_dir = self.services.driver.migration_tls_dir(layout, "client", t.ca, t.cert, t.key)
        return MigrationTuning(
            tls_dir=tls_dir,
            multifd_channels=self.opts.parallel,
            postcopy=self.opts.postcopy,
            bandwidth_bytes=self.opts.bandwidth_mib * MIB,
            downtime_ms=self.opts.initial_downtime_ms,
            auto_converge=self.opts.auto_converge,
        )

    # -- the destination -------------------------------------------------------------------

    def _dest(self, path: str) -> Any:
        with self.services.peer(self.opts.target) as client:
            return client.get(path)

    def _prepare_destination(self, spec: VmSpec, timeout_s: float) -> dict[str, Any]:
        """The receive task on the target, followed until it listens: its address, port
        and (copying disks) NBD port."""
        self._step(MigrationPhase.PREPARE, f"a receive task on {self.opts.target}")
        plan = self.disks.plan if self.disks is not None else None
        args = ReceiveArgs(
            migration_id=self.migration_id,
            spec=spec,
            source=self.services.node,
            tls=not self.opts.insecure,
            parallel=self.opts.parallel,
            postcopy=self.opts.postcopy,
            timeout_s=timeout_s,
            # The identities of the directories both nodes share: the target checks them
            # again before it starts anything, in case its storage changed since.
            storage=plan.identities if plan is not None else {},
            disks=tuple(plan.receive_disks()) if plan is not None else (),
        ).model_dump(mode="json")
        with self.services.peer(self.opts.target) as client:
            task = client.post("/tasks", {"kind": "migration.receive", "args": args})
        dest_task = self.dest_task = str(task["id"])

        def listening(t: dict[str, Any]) -> dict[str, Any] | None:
            if TaskState(t["state"]).finished:
                raise MigrationFailed(f"the target's receive task {t['state']}: {t['error']}")
            return t["progress"] if t["progress"].get("phase") == "listening" else None

        # Followed as it changes (the target streams it): no polling delay.
        with self.services.peer(self.opts.target) as client:
            ready: dict[str, Any] = client.follow_task(
                dest_task, listening, timeout=DEST_READY_TIMEOUT, phase="listening"
            )
        return ready

    def _dest_outcome(self) -> str:
        """The receive task's state once it finishes (the target runs the VM on success)."""

        def finished(t: dict[str, Any]) -> str | None:
            state = TaskState(t["state"])
            return state.value if state.finished else None

        assert self.dest_task is not None
        with self.services.peer(self.opts.target) as client:
            return client.follow_task(self.dest_task, finished, timeout=DEST_FINISH_TIMEOUT)

    # -- transfer --------------------------------------------------------------------------

    def _report(self, sample: MigrationStatus, state: policy.PolicyState) -> None:
        self.ctx.progress(
            phase="post-copy" if sample.state == MigrationState.POSTCOPY else "transfer",
            done=sample.ram_transferred,
            total=sample.ram_total,
            unit="bytes",
            remaining=sample.ram_remaining,
            mbps=round(sample.throughput_mbps, 1),
            dirty_rate_bytes=sample.dirty_pages_rate * sample.page_size,
            expected_downtime_ms=sample.expected_downtime_ms,
            iteration=sample.iterations,
            downtime_limit_ms=state.downtime_ms,
            throttle_percent=sample.throttle_percent,
            eta_s=policy.eta_seconds(sample),
            elapsed_ms=sample.elapsed_ms,
            last_action=self.actions[-1] if self.actions else "",
        )

    def _apply(self, actions: list[policy.Action]) -> None:
        layout = self.services.vms.layout(self.vm)
        driver = self.services.driver
        features = driver.migration_features
        for action in actions:
            needs = {
                policy.RaiseDowntime: "downtime-limit",
                policy.EngageAutoConverge: "auto-converge",
                policy.StartPostcopy: "postcopy",
                policy.ForceComplete: "force",
            }.get(type(action))
            if needs is not None and needs not in features:
                self.ctx.log(f"policy: {action} skipped ({self._hypervisor} has no {needs})")
                continue
            match action:
                case policy.RaiseDowntime(ms):
                    driver.migration_tune(layout, downtime_ms=ms)
                    note = f"downtime limit raised to {ms} ms"
                case policy.EngageAutoConverge():
                    driver.migration_tune(layout, engage_auto_converge=True)
                    note = "auto-converge engaged"
                case policy.StartPostcopy(reason):
                    driver.migration_postcopy(layout)
                    note = f"switched to post-copy ({reason})"
                case policy.ForceComplete(reason):
                    driver.migration_force(layout)
                    note = f"forcing completion: guest paused ({reason})"
                case policy.Abort(reason):
                    raise MigrationFailed(f"aborted by policy: {reason}")
            self.actions.append(note)
            self.ctx.log(note)

    def _resident(self, layout: VmLayout, ram: int) -> int | None:
        """What the host holds of the guest's RAM as the copy starts (read while QEMU sends:
        its /proc smaps, not QEMU's monitor). The plan learns from it what part of it the
        stream really sent (estimate.py: resident pages that are zero go as headers)."""
        with contextlib.suppress(CorralError, OSError):
            return self.services.driver.resident_guest_bytes(layout, ram)
        return None

    def _transfer(
        self, address: str, port: int, limits: policy.PolicyLimits, ram: int
    ) -> MigrationStatus:
        layout = self.services.vms.layout(self.vm)
        tuning = self._tuning(source=True)
        if tuning.tls_dir is not None:
            # The target's certificate must name the target, not merely its address: an
            # address taken over by another member's host is refused at the handshake.
            tuning = replace(tuning, tls_hostname=self.opts.target)
        self._step(
            MigrationPhase.TRANSFER,
            f"to {address}:{port}, tls="
            f"{tuning.tls_dir is not None}, channels={tuning.multifd_channels}",
        )
        self.services.driver.migration_start(layout, address, port, tuning)
        self.transfer_started = True
        self.resident_bytes = self._resident(layout, ram)
        state = policy.initial_state(limits)
        watched = self.services.clock()
        reported = watched - REPORT_INTERVAL
        while True:
            if self.ctx.cancel_requested:
                raise TaskCancelled()
            if self.services.clock() - watched >= self.services.watch_interval:
                self._watch_target()
                if self.disks is not None:
                    self.disks.check()  # a failed mirror: the copy there would miss writes
                watched = self.services.clock()
            sample = self.services.driver.migration_status(layout)
            if sample.state == MigrationState.COMPLETED:
                return sample
            if sample.state in (MigrationState.FAILED, MigrationState.CANCELLED):
                raise MigrationFailed(
                    f"{self._hypervisor} reports the migration {sample.state}:"
                    f" {sample.error or 'no reason given'}"
                )
            state, actions = policy.decide(state, sample, limits)
            self._apply(actions)
            # QEMU's events may wake this loop many times a second (a pass each): the
            # progress record, which every follower reads, is written ten times a second.
            now = self.services.clock()
            if actions or now - reported >= REPORT_INTERVAL:
                self._report(sample, state)
                reported = now
            # Until QEMU's next event (a new pass, completed, failed) or the poll interval.
            self.services.driver.migration_wait(layout, self.services.poll_interval)

    def _watch_target(self) -> None:
        """The target lost, before switchover: one place decides it, and the migration
        rolls back at once (the source cancels, the VM runs on here) rather than waiting for
        the hypervisor's stream to time out or for the completion timeout. Lost means: the
        target was removed from the cluster, or is offline (no heartbeat for the cluster's
        offline time), or its receive task ended (its QEMU died, its agent restarted and
        gave the VM up, it was cancelled there).

        :raise MigrationFailed: the target is lost, saying how.
        """
        target = self.opts.target
        try:
            self.services.require_state(f"hand {self.vm} over", None)
        except ConflictError as exc:
            raise MigrationFailed(f"{exc.message}; stopped before the switchover") from exc
        if not self.services.is_member(target):
            raise MigrationFailed(f"{target} was removed from the cluster during the migration")
        if not self.services.is_online(target):
            raise MigrationFailed(f"target lost: {target} went offline during the migration")
        try:
            task = self._dest(f"/tasks/{self.dest_task}")
        except CorralError as exc:  # one missed answer is not a lost target: heartbeats judge
            self.ctx.log(f"the target's receive task did not answer: {exc}")
            return
        ended = TaskState(task["state"])
        # Succeeded means the VM already runs there: the switchover happened, not a loss
        # (the next sample says completed); never roll back on that.
        if ended.finished and ended != TaskState.SUCCEEDED:
            raise MigrationFailed(
                f"target lost: the receive task on {target} {task['state']}:"
                f" {task['error'] or 'no reason given'}"
            )

    # -- the whole story -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        if not self.preflight_passed:  # a task made by hand: the desk's preflight did not run
            reasons = check(self.services, self.opts)
            if reasons:
                self._step(MigrationPhase.ROLLED_BACK, "refused by preflight")
                raise PreflightFailed(reasons)
        self.services.require_state(f"migrate {self.vm}", self.vm)  # etcd: its owner, agreed
        self.services = self.services.pinned(self.opts.target)
        record = self.services.vms.local(self.vm)
        ram = record.spec.memory_mib * MIB
        limits = self.opts.limits(ram)
        self.ctx.progress(phase="prepare", done=0, total=ram, unit="bytes")
        try:
            self.disks = self._plan_disks(record.spec)
            ready = self._prepare_destination(record.spec, limits.completion_timeout_s + 120)
            address, port = str(ready["address"]), int(ready["port"])
            if self.disks.plan.copies:
                self._copy_disks(address, int(ready["nbd_port"]))
            final = self._transfer(address, port, limits, ram)
            if self.disks.plan.copies:
                self.disks.finish()  # every mirror ended clean, or this rolls back
        except BaseException as exc:
            self._fail_before_switchover(exc)
            raise
        self._step(MigrationPhase.SWITCHOVER, f"downtime {final.downtime_ms} ms")
        self.ctx.progress(
            phase="switchover", done=final.ram_total, total=final.ram_total, unit="bytes"
        )
        if self.disks.plan.copies:
            self._release_target()
        try:
            outcome = self._dest_outcome()
        except CorralError as exc:
            outcome = f"unknown ({exc})"
        if outcome == "succeeded":
            self._handoff()
        else:
            self._settle(record.spec, outcome)
        summary = summarize(self, final, time.monotonic() - started)
        self.ctx.progress(
            phase="done", done=final.ram_total, total=final.ram_total, unit="bytes", summary=summary
        )
        return summary

    # -- local disks -----------------------------------------------------------------------

    def _plan_disks(self, spec: VmSpec) -> DiskCopyRun:
        source_storage = self.services.local_facts().get("storage", {})
        if self.opts.with_local_disks:
            target = self.services.target_view(self.opts.target)
            target_storage = target.facts.get("storage", {}) if target is not None else {}
        else:
            # Without the flag preflight let it go only with every directory shared: no
            # need to ask the target again (one round trip less on every migration).
            target_storage = source_storage
        plan = plan_copy(self.services.driver, spec, self.opts, source_storage, target_storage)
        return DiskCopyRun(self.services.driver, self.services.vms.layout(self.vm), plan)

    def _copy_disks(self, address: str, nbd_port: int) -> None:
        """Mirror every local disk into the target's new images until each is in step;
        from then on every guest write reaches both before it completes."""
        assert self.disks is not None
        plan = self.disks.plan
        tuning = self._tuning(source=True)
        self._step(
            MigrationPhase.DISK_COPY,
            f"{len(plan.copies)} disk(s), {size_text(plan.data_bytes)} of data"
            f" ({size_text(plan.virtual_bytes)} virtual) to {address}:{nbd_port},"
            f" tls={tuning.tls_dir is not None}",
        )
        hostname = self.opts.target if tuning.tls_dir is not None else None
        self.disks.start(address, nbd_port, tuning.tls_dir, hostname, tuning.bandwidth_bytes)
        watched = [self.services.clock()]

        def between() -> None:
            if self.ctx.cancel_requested:
                raise TaskCancelled()
            if self.services.clock() - watched[0] >= self.services.watch_interval:
                self._watch_target()
                watched[0] = self.services.clock()

        reported = [self.services.clock() - REPORT_INTERVAL]

        def report(status: DiskCopyStatus, rate: float, eta: float | None) -> None:
            now = self.services.clock()
            if now - reported[0] >= REPORT_INTERVAL or status.ready:
                reported[0] = now
                self.ctx.progress(**progress_record(status, rate, eta, len(plan.copies)))

        self.disks.until_ready(
            disk_timeout(plan, self.opts.timeout_per_gib_s),
            between,
            report,
            self.services.poll_interval,
        )
        self.ctx.log(f"disks in step after {self.disks.seconds:.2f}s; the RAM migration starts")

    def _release_target(self) -> None:
        assert self.dest_task is not None
        release_target(lambda: self.services.peer(self.opts.target), self.dest_task, self.ctx.log)

    def _settle(self, spec: VmSpec, outcome: str) -> None:
        """After switchover without a plain success from the target: ask both nodes what
        runs (never resuming the source unless the target is known not to run the VM),
        retrying while the target does not answer."""
        self.ctx.log(f"the target's receive task: {outcome}; asking both nodes what runs")
        deadline = time.monotonic() + SETTLE_TIMEOUT

        def settled() -> dict[str, Any] | None:
            found: dict[str, Any] = recover_vm(self.services, self.vm, self.opts.target, spec)
            if found["where"] == "unknown" and time.monotonic() < deadline:
                return None
            return found

        found = wait_for(
            settled, timeout=SETTLE_TIMEOUT + 30, interval=1.0, what="the target to answer"
        )
        self.ctx.log(f"settled: {found['outcome']}")
        if found["where"] == "target":
            self._step(
                MigrationPhase.HANDOFF, f"{self.opts.target} runs {self.vm} ({found['outcome']})"
            )
            self._step(MigrationPhase.SUCCEEDED)
            return
        if found["where"] == "source":
            self._step(MigrationPhase.ROLLED_BACK, found["outcome"])
            raise MigrationFailed(
                f"the target could not run the VM ({outcome}); it runs on"
                f" {self.services.node} again"
            )
        self._step(MigrationPhase.FAILED, found["outcome"])
        if found["where"] != "unknown":
            raise MigrationFailed(str(found["outcome"]))
        raise MigrationFailed(
            f"{found['outcome']}; run 'corral migrate --recover {self.vm}' once both nodes answer"
        )

    def _handoff(self) -> None:
        self._step(MigrationPhase.HANDOFF, f"{self.opts.target} runs {self.vm}")
        vms = self.services.vms
        spec = vms.local(self.vm).spec
        vms.inventory.remove(self.vm)
        self._step(MigrationPhase.CLEANUP, f"stopping the source's {self._hypervisor}")
        try:
            self.services.driver.migration_finalize_source(spec, vms.layout(self.vm), success=True)
            if self.disks is not None:
                after_success(
                    self.disks.plan, spec, vms.layout(self.vm), vms.dirs, self.opts, self.ctx.log
                )
        except (CorralError, OSError) as exc:
            self.ctx.log(f"cleanup of the source failed (the VM runs on the target): {exc}")
        self._step(MigrationPhase.SUCCEEDED)

    def _fail_before_switchover(self, exc: BaseException) -> None:
        why = "cancelled" if isinstance(exc, TaskCancelled) else f"{type(exc).__name__}: {exc}"
        try:
            self._rollback(why)
        except CorralError as rollback_error:
            self._step(MigrationPhase.FAILED, f"{why}; rollback failed: {rollback_error}")

    def _rollback(self, why: str) -> None:
        """Cancel on both sides and make sure the VM runs here, where it was."""
        layout = self.services.vms.layout(self.vm)
        driver = self.services.driver
        # The target first: its task then stops as cancelled, not as a broken stream.
        if self.dest_task is not None:
            try:
                with self.services.peer(self.opts.target) as client:
                    client.post(f"/tasks/{self.dest_task}/cancel")
            except CorralError as exc:
                self.ctx.log(f"could not cancel the target's task: {exc}")
        if self.transfer_started:
            driver.migration_cancel(layout)
        if self.dest_task is not None:
            try:
                outcome = self._dest_outcome()
            except CorralError as exc:
                self.ctx.log(f"the target's task did not finish: {exc}")
            else:
                if outcome == TaskState.SUCCEEDED:
                    # The switchover won the race with the failure: the VM runs there now.
                    # Never resume here on that; let both nodes' answers settle it.
                    found = recover_vm(self.services, self.vm, self.opts.target, None)
                    self._step(MigrationPhase.FAILED, f"{why}; {found['outcome']}")
                    return
        if self.transfer_started:

            def settled() -> bool:
                return not driver.migration_status(layout).state.in_flight

            with contextlib.suppress(CorralError):
                wait_for(settled, timeout=30, what="the migration to stop", interval=0.05)
        if self.disks is not None:
            self.disks.abandon()  # the source's images were never switched: they stay
        if self.services.vms.status(self.vm).state != RunState.RUNNING:
            # Sent away and paused: with etcd, it runs again only while this node may still
            # own it, so that it can never run on two nodes.
            because = held_back(self.services, self.vm)
            if because is not None:
                self._step(MigrationPhase.FAILED, f"{why}; not resumed here: {because}")
                return
        driver.migration_finalize_source(None, layout, success=False)
        self.services.vms.inventory.set_state(
            self.vm, "running", f"migration to {self.opts.target} rolled back"
        )
        self._step(MigrationPhase.ROLLED_BACK, why)


def hold_reason(target: str) -> str:
    """What a migration's hold says to whoever is refused meanwhile."""
    return f"migrating to {target}"


def run_source(services: MigrationServices, ctx: TaskContext) -> dict[str, Any]:
    opts = MigrationOptions.model_validate(ctx.args["options"])
    try:
        # Other operations on the VM (but kill) are refused until the migration ends; the
        # hold the desk took when the migration was asked for is adopted.
        migration_id = str(ctx.args["migration_id"])
        with services.vms.hold(opts.vm, hold_reason(opts.target), token=migration_id):
            return SourceMigration(
                services,
                opts,
                migration_id,
                ctx,
                preflight_passed=ctx.args.get("preflight") == "passed",
            ).run()
    except (MigrationFailed, PreflightFailed):
        raise
    except CorralError as exc:  # whatever failed, the migration did (and says why)
        raise MigrationFailed(exc.message) from exc
    finally:
        # Reconcile left the VM to the migration: record now what runs (a QEMU that died
        # during the migration is recorded stopped before the caller hears the outcome).
        try:
            change = services.vms.reconcile_vm(opts.vm)
        except CorralError as exc:
            ctx.log(f"could not observe {opts.vm} after the migration: {exc}")
        else:
            if change is not None:
                ctx.log(f"VM {opts.vm} was recorded {change[1]} but is {change[2]}")
