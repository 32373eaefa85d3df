"""The migration use cases a node serves: start (preflight, then the migration task), plan
(preflight and an estimate, moving nothing), cancel and recover. The agent wires them to its
routes (agent/migration_desk.py builds `MigrationDesk` from the node); nothing here knows
HTTP or the agent.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.errors import ConflictError, CorralError, NotFoundError
from corral.migration.disk_phase import DiskCopyPlan, plan_copy
from corral.migration.estimate import PastMigration, disk_estimate, estimate
from corral.migration.journal import MigrationPhase
from corral.migration.options import MIB, MigrationOptions
from corral.migration.orchestrator import hold_reason
from corral.migration.placement import no_target_reasons
from corral.migration.recovery import recover_migration
from corral.migration.services import MigrationServices
from corral.migration.source_checks import (
    PreflightFailed,
    candidates,
    check,
    place,
)
from corral.model import AUTO, VmSpec

UNREACHABLE = ("target-unknown", "target-offline", "same-node")


@dataclass
class MigrationDesk:
    """This node's migration use cases, with what they need of the node injected."""

    services: MigrationServices
    # Queue a migration task here: (args, owner) -> the task's record.
    submit: Callable[[dict[str, Any], str], dict[str, Any]]
    # The migration task of a VM queued or running here, if any: vm -> task id.
    migrating: Callable[[str], str | None]
    # Whether a task is still queued or running: task id -> bool.
    task_alive: Callable[[str], bool]
    cancel_task: Callable[[str], dict[str, Any]]
    # Bytes per second from a member to here over the cluster's link.
    probe_link: Callable[[str], float]
    # What the last migrations from here to a node achieved, newest first: (target, tls).
    history: Callable[[str, bool], list[PastMigration]] = lambda _target, _tls: []

    def start(
        self,
        opts: MigrationOptions,
        owner: str,
        parent: str | None = None,
        *,
        judged: bool = False,
    ) -> dict[str, Any]:
        """Preflight, refusing with every reason; then the migration task, with the VM held
        from now on (a second migration or any other operation is refused until the task
        ends, queued or running). Preflight runs here only: the task trusts it (the target
        checks its storage and the name again).

        `parent`: the task this migration is a child of (a drain). `judged`: the caller
        ran this very preflight a moment ago (a drain's placement judged every member with
        these options and picked this target): it is not run a second time.

        :raise ConflictError: the VM is held (migrating already).
        :raise PreflightFailed: every reason it cannot move now."""
        vms = self.services.vms
        vms.refuse_if_held(opts.vm)
        self.services.require_state(f"migrate {opts.vm}", opts.vm)  # etcd: agreed owner
        opts = place(self.services, opts)  # `auto`: the best member that passes
        reasons = [] if judged else check(self.services, opts)
        if reasons:
            raise PreflightFailed(reasons)
        record = self.services.journal.begin(opts.vm, self.services.node, opts.target)
        task_id: list[str] = []  # known once queued; until then the hold is alive

        def alive() -> bool:
            return not task_id or self.task_alive(task_id[0])

        try:
            vms.take_hold(opts.vm, hold_reason(opts.target), record.id, alive)
        except ConflictError as exc:  # another start won the race
            self.services.journal.step(record.id, MigrationPhase.ROLLED_BACK, exc.message)
            raise
        args = {
            "migration_id": record.id,
            "options": opts.model_dump(mode="json"),
            "preflight": "passed",
        }
        if parent is not None:
            args["parent"] = parent
        try:
            task = self.submit(args, owner)
        except BaseException:
            vms.release_hold(opts.vm, record.id)
            raise
        task_id.append(str(task["id"]))
        return {
            "migration_id": record.id,
            "source": self.services.node,
            "target": opts.target,
            "task": task,
        }

    def plan(self, opts: MigrationOptions) -> dict[str, Any]:
        """The preflight's answer and an estimate, moving nothing; for target `auto`, every
        member ranked with its reasons, and the plan for the best one."""
        if opts.target != AUTO:
            return self._plan(opts)
        ranked = candidates(self.services, opts)
        if ranked and ranked[0].allowed:
            answer = self._plan(opts.model_copy(update={"target": ranked[0].node}))
        else:
            answer = {
                "vm": opts.vm,
                "source": self.services.node,
                "target": None,
                "allowed": False,
                "reasons": [r.to_json() for r in no_target_reasons(opts.vm, ranked)],
            }
        answer["ranking"] = [c.to_json() for c in ranked]
        return answer

    def _plan(self, opts: MigrationOptions) -> dict[str, Any]:
        services = self.services
        reasons = check(services, opts)
        answer: dict[str, Any] = {
            "vm": opts.vm,
            "source": services.node,
            "target": opts.target,
            "allowed": not reasons,
            "reasons": [r.to_json() for r in reasons],
        }
        try:
            record = services.vms.local(opts.vm)
        except CorralError:
            return answer
        ram = record.spec.memory_mib * MIB
        limits = opts.limits(ram)
        found: dict[str, Any] = {
            "ram_bytes": ram,
            "timeout_s": limits.completion_timeout_s,
            "max_downtime_ms": limits.max_downtime_ms,
            "storage": services.vms.dirs.describe(),
        }
        dirty = None
        with contextlib.suppress(CorralError):
            layout = services.vms.layout(opts.vm)
            dirty = float(services.driver.measure_dirty_rate(layout, 1) * MIB)
            found["dirty_rate_bytes"] = round(dirty)
        link = None
        if not any(r.code in UNREACHABLE for r in reasons):
            with contextlib.suppress(CorralError, OSError):
                link = self.probe_link(opts.target)
                found["link_bytes_per_s"] = round(link)
        resident = None
        with contextlib.suppress(CorralError, OSError):
            resident = services.driver.resident_guest_bytes(services.vms.layout(opts.vm), ram)
        past = self.history(opts.target, not opts.insecure)
        found |= estimate(
            ram,
            limits,
            resident_bytes=resident,
            dirty_bytes_per_s=dirty,
            link_bytes_per_s=link,
            bandwidth_cap_bytes_per_s=opts.bandwidth_mib * MIB,
            past=past,
            vm=opts.vm,
        )
        copy = self._disk_copy(opts, record.spec)
        if copy is not None:
            disks = disk_estimate(
                copy.data_bytes,
                len(copy.copies),
                link_bytes_per_s=link,
                bandwidth_cap_bytes_per_s=opts.bandwidth_mib * MIB,
                past=past,
            )
            found["disk_copy"] = disks
            ram_s, disk_s = found.get("expected_s"), disks["copy_s"]
            if isinstance(ram_s, float | int) and isinstance(disk_s, float | int):
                found["expected_s"] = round(ram_s + disk_s, 2)  # the disks first, then RAM
        answer["estimate"] = found
        return answer

    def _disk_copy(self, opts: MigrationOptions, spec: VmSpec) -> DiskCopyPlan | None:
        """The local disks a move to the target copies (asked with or without the flag:
        the plan says what the flag would cost); None when there are none or the target
        cannot say what it shares."""
        target = self.services.target_view(opts.target)
        if target is None or not target.online:
            return None
        wanted = opts.model_copy(update={"with_local_disks": True})
        try:
            plan = plan_copy(
                self.services.driver,
                spec,
                wanted,
                self.services.local_facts().get("storage", {}),
                target.facts.get("storage", {}),
            )
        except CorralError:
            return None
        return plan if plan.copies else None

    def cancel(self, vm: str) -> dict[str, Any]:
        """Ask the migration of `vm` from this node to stop.

        :raise NotFoundError: none runs here."""
        task = self.migrating(vm)
        if task is None:
            raise NotFoundError(f"no migration of {vm} is running from {self.services.node}")
        return self.cancel_task(task)

    def recover(self, vm: str) -> dict[str, Any]:
        """Ask both nodes of `vm`'s last migration what runs, and repair the records.

        :raise ConflictError: a migration of `vm` runs here now (cancel it instead)."""
        self.services.vms.refuse_if_held(vm)
        latest = self.services.journal.latest(vm)
        if latest is None:
            raise NotFoundError(f"{self.services.node} never migrated a VM named {vm!r}")
        return recover_migration(self.services, self.services.journal, latest.id, vm, latest.target)
