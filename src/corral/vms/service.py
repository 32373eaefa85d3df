"""The VM service of one node: create, start, stop, kill, pause, resume, delete and
checkpoint VMs through the hypervisor driver, keeping the records true to what runs.

Recorded state is what this node last did or saw; `status` always asks the driver. When they
differ (a VM killed behind the agent's back, one that died while the agent was down),
`reconcile` records the truth with the reason. Only listings (`describe_all`) may reuse an
observation younger than LIST_STATUS_MAX_AGE, so many clients listing at once do not each
ask every VM's monitor (measured in bench/control_plane.py); every decision asks afresh.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from corral.errors import ConflictError, CorralError, NotFoundError
from corral.file_tail import tail_lines
from corral.hypervisors.base import (
    CheckpointInfo,
    MigrationDriver,
    RunState,
    RuntimeStatus,
    VmLayout,
)
from corral.vms.directories import NodeDirectories
from corral.vms.inventory import VmInventory, VmRecord
from corral.vms.specs import VmRequest, resolve

log = logging.getLogger(__name__)
LIST_STATUS_MAX_AGE = 0.5  # seconds


F = TypeVar("F", bound=Callable[..., Any])


def _changes_vm(method: F) -> F:
    """The method changes VM `name`: it is refused while a migration holds the VM (see
    `hold`), it holds the VM's operation lock (so `reconcile` does not judge the VM
    half-way, e.g. between a restore's kill and its new QEMU), and listings ask afresh
    before and after it."""

    forgetting = _emergency(method)

    @functools.wraps(method)
    def wrapper(self: VmService, name: str, *args: Any, **kwargs: Any) -> Any:
        with self.operating(name):
            self.refuse_if_held(name)  # under the lock: no hold begins meanwhile
            return forgetting(self, name, *args, **kwargs)

    return cast(F, wrapper)


def _emergency(method: F) -> F:
    """The method stops VM `name` at once (kill): it never waits, neither for a migration
    that holds the VM (which then fails as for any dead hypervisor) nor for an operation in
    progress (a graceful stop may wait minutes for its guest). Listings ask afresh before
    and after it."""

    @functools.wraps(method)
    def wrapper(self: VmService, name: str, *args: Any, **kwargs: Any) -> Any:
        self._forget(name)
        try:
            return method(self, name, *args, **kwargs)
        finally:
            self._forget(name)

    return cast(F, wrapper)


@dataclass(frozen=True)
class _Hold:
    why: str  # "migrating to node2"
    token: str | None = None  # the operation's (a migration's id)
    alive: Callable[[], bool] | None = None  # a hold taken ahead: while its task lives


class VmService:
    def __init__(
        self, node: str, inventory: VmInventory, driver: MigrationDriver, dirs: NodeDirectories
    ) -> None:
        self.node = node
        self.inventory = inventory
        self.driver = driver
        self.dirs = dirs
        self._seen: dict[str, tuple[float, RuntimeStatus]] = {}
        self._seen_lock = threading.Lock()
        self._vm_locks: dict[str, threading.RLock] = {}
        self._vm_locks_lock = threading.Lock()
        self._held: dict[str, _Hold] = {}  # VM -> what holds it ("migrating to node2")

    def operating(self, name: str) -> threading.RLock:
        """The lock held while an operation changes VM `name` (re-entrant)."""
        with self._vm_locks_lock:
            return self._vm_locks.setdefault(name, threading.RLock())

    @contextlib.contextmanager
    def hold(self, name: str, why: str, token: str | None = None) -> Iterator[None]:
        """Hold VM `name` for a long operation that drives the hypervisor itself (a
        migration): other operations but kill are refused meanwhile, naming `why`, and
        reconcile leaves the VM to it. A restore or a start on the source during a
        migration could otherwise run a second copy of a VM that already runs on the target.

        An operation in progress on the VM is waited for first, so none runs on beside
        the holder. A hold taken ahead with the same `token` (`take_hold`) is adopted.

        :raise ConflictError: something else holds it."""
        with self.operating(name), self._vm_locks_lock:
            current = self._current_hold(name)
            if current is not None and (token is None or current.token != token):
                raise ConflictError(f"VM {name} is {current.why}")
            self._held[name] = _Hold(why, token)
        try:
            yield
        finally:
            with self._vm_locks_lock:
                self._held.pop(name, None)

    def take_hold(self, name: str, why: str, token: str, alive: Callable[[], bool]) -> None:
        """Hold VM `name` now for an operation that runs later (a migration asked for now
        and run by a task): the operation's `hold(..., token)` adopts it. Until then it
        lasts while `alive()` (the task is queued or running) or until `release_hold`.

        :raise ConflictError: something holds it already (a migration: the message says)."""
        with self.operating(name), self._vm_locks_lock:
            current = self._current_hold(name)
            if current is not None:
                raise ConflictError(f"VM {name} is {current.why}")
            self._held[name] = _Hold(why, token, alive)

    def release_hold(self, name: str, token: str) -> None:
        """Give back a hold taken ahead (its operation will not run)."""
        with self._vm_locks_lock:
            current = self._held.get(name)
            if current is not None and current.token == token:
                del self._held[name]

    def _current_hold(self, name: str) -> _Hold | None:
        """The hold on `name`, dropping one taken ahead whose operation is gone (a task
        cancelled while queued). Called with `_vm_locks_lock` held."""
        current = self._held.get(name)
        if current is not None and current.alive is not None and not current.alive():
            del self._held[name]
            return None
        return current

    def held(self, name: str) -> str | None:
        """What holds VM `name`, if anything."""
        with self._vm_locks_lock:
            current = self._current_hold(name)
            return current.why if current is not None else None

    def refuse_if_held(self, name: str) -> None:
        """:raise ConflictError: a migration holds VM `name` (the message says which)."""
        why = self.held(name)
        if why is not None:
            raise ConflictError(
                f"VM {name} is {why}; wait until it finishes or cancel it"
                f" (corral migrate --cancel {name})"
            )

    # -- lookups ---------------------------------------------------------------------------

    def record(self, name: str) -> VmRecord:
        return self.inventory.get(name)

    def local(self, name: str) -> VmRecord:
        """The VM's record, if this node owns it.

        :raise ConflictError: another node owns it (the message names it).
        """
        record = self.inventory.get(name)
        if record.owner != self.node:
            raise ConflictError(f"VM {name} is owned by {record.owner}; use --node {record.owner}")
        return record

    def changeable(self, name: str) -> VmRecord:
        """The VM's record, if this node owns it and no migration holds it (asked before an
        operation is queued as a task; the operation asks again when it runs).

        :raise ConflictError: another node owns it, or a migration holds it."""
        record = self.local(name)
        self.refuse_if_held(name)
        return record

    def layout(self, name: str) -> VmLayout:
        return self.dirs.layout(name)

    def status(self, name: str) -> RuntimeStatus:
        """The VM's state, asked of the driver now."""
        found = self.driver.status(self.layout(name))
        with self._seen_lock:
            self._seen[name] = (time.monotonic(), found)
        return found

    def _forget(self, name: str) -> None:
        """The VM is about to change: listings must ask afresh."""
        with self._seen_lock:
            self._seen.pop(name, None)

    def _recent_status(self, name: str) -> RuntimeStatus:
        with self._seen_lock:
            seen = self._seen.get(name)
        if seen is not None and time.monotonic() - seen[0] < LIST_STATUS_MAX_AGE:
            return seen[1]
        return self.status(name)

    def describe(self, record: VmRecord, *, recent: bool = False) -> dict[str, Any]:
        """The record and its observed state (`recent`: an observation up to
        LIST_STATUS_MAX_AGE old will do)."""
        info = record.to_json()
        ask = self._recent_status if recent else self.status
        observed = ask(record.name) if record.owner == self.node else None
        info["observed"] = observed.state.value if observed else None
        info["pid"] = observed.pid if observed else None
        info["held"] = self.held(record.name)  # "migrating to node2", or None
        info["console_log"] = str(self.layout(record.name).console_log)
        return info

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(r, recent=True) for r in self.inventory.all()]

    # -- definition ------------------------------------------------------------------------

    def create(self, request: VmRequest) -> VmRecord:
        """Define a VM on this node (stopped). Nothing is left behind if any step fails.

        :raise ConflictError: the name is taken. :raise UserInputError: naming the field.
        """
        try:
            self.inventory.get(request.name)
            raise ConflictError(f"a VM named {request.name!r} already exists")
        except NotFoundError:
            pass
        existing = self.dirs.spec_file(request.name)
        if existing.exists():
            # A VM of that name has its config here already: on shared storage, another
            # node's (perhaps one that is offline now, whose VM may still run), or one left
            # over. A second VM of the name would share its config and disks.
            raise ConflictError(
                f"a VM named {request.name!r} already has its config at {existing} (another"
                " node's VM on shared storage, or one left over): choose another name"
            )
        spec = resolve(request, self.dirs)
        created = [d.path for d in spec.disks if d.size_mib is not None and not d.path.exists()]
        try:
            self.driver.define(spec)
            spec_file = self.dirs.spec_file(spec.name)
            spec_file.parent.mkdir(parents=True, exist_ok=True)
            spec_file.write_text(spec.model_dump_json(indent=2) + "\n")
            return self.inventory.add(spec, self.node, RunState.STOPPED.value)
        except BaseException:
            for path in created:
                path.unlink(missing_ok=True)
            self.dirs.spec_file(spec.name).unlink(missing_ok=True)
            raise

    @_changes_vm
    def delete(self, name: str, *, keep_disks: bool = False) -> None:
        """Remove a stopped VM: its runtime files, its spec and record (disks unless kept).

        :raise ConflictError: it is running.
        """
        record = self.local(name)
        if self.status(name).state != RunState.STOPPED:
            raise ConflictError(f"VM {name} is running; stop or kill it first")
        self.driver.undefine(record.spec, self.layout(name), delete_disks=not keep_disks)
        self.dirs.spec_file(name).unlink(missing_ok=True)
        self.inventory.remove(name)

    # -- lifecycle -------------------------------------------------------------------------

    @_changes_vm
    def start(self, name: str) -> RuntimeStatus:
        """Start the VM (nothing to do if it runs)."""
        record = self.local(name)
        current = self.status(name)
        if current.state in (RunState.RUNNING, RunState.PAUSED):
            return current
        status = self.driver.start(record.spec, self.layout(name))
        self.inventory.set_state(name, RunState.RUNNING.value, "started")
        return status

    @_changes_vm
    def stop(self, name: str, timeout: float) -> bool:
        """ACPI power-off, forced after `timeout`; True when the guest went by itself."""
        record = self.local(name)
        graceful = self.driver.shutdown(self.layout(name), timeout)
        self._release(record)
        how = "powered off" if graceful else f"forced off after {timeout:g}s"
        self.inventory.set_state(name, RunState.STOPPED.value, how)
        return graceful

    @_emergency
    def kill(self, name: str) -> None:
        record = self.local(name)
        self.driver.kill(self.layout(name))
        self._release(record)
        self.inventory.set_state(name, RunState.STOPPED.value, "killed")

    def _release(self, record: VmRecord) -> None:
        """What a stopped VM no longer needs here: its taps and control sockets (its logs
        stay). Also run when a VM is found dead, so a crash leaves nothing behind."""
        try:
            self.driver.release(record.spec, self.layout(record.name))
        except CorralError as exc:
            log.warning("cannot release what VM %s held: %s", record.name, exc)

    @_changes_vm
    def pause(self, name: str) -> None:
        self._require_state(name, {RunState.RUNNING})
        self.driver.pause(self.layout(name))
        self.inventory.set_state(name, RunState.PAUSED.value, "paused")

    @_changes_vm
    def resume(self, name: str) -> None:
        self._require_state(name, {RunState.PAUSED})
        self.driver.resume(self.layout(name))
        self.inventory.set_state(name, RunState.RUNNING.value, "resumed")

    def _require_state(self, name: str, allowed: set[RunState]) -> RuntimeStatus:
        self.local(name)
        status = self.status(name)
        if status.state not in allowed:
            wanted = " or ".join(sorted(s.value for s in allowed))
            raise ConflictError(f"VM {name} is {status.state.value}, not {wanted}")
        return status

    def console(self, name: str, lines: int) -> str:
        """The last `lines` lines of the VM's serial console."""
        self.record(name)
        found = tail_lines(self.layout(name).console_log, lines)
        return "\n".join(found) + "\n" if found else ""

    def reconcile(self) -> list[tuple[str, str, str]]:
        """Record the observed state of every VM this node owns where it differs from the
        record; returns (vm, recorded, observed) for each change."""
        changes = []
        for record in self.inventory.all():
            if record.owner != self.node:
                continue
            lock = self.operating(record.name)
            if not lock.acquire(blocking=False):
                continue  # an operation is changing it; judge it next time
            try:
                change = self._reconcile_one(record.name)
            finally:
                lock.release()
            if change is not None:
                changes.append(change)
        return changes

    def reconcile_vm(self, name: str) -> tuple[str, str, str] | None:
        """Record VM `name`'s observed state now if it differs (waiting for an operation on
        it to end); what `reconcile` does for one VM, for an operation that just released
        the VM (a migration that failed because its QEMU died)."""
        with self.operating(name):
            return self._reconcile_one(name)

    def _reconcile_one(self, name: str) -> tuple[str, str, str] | None:
        """Reconcile VM `name`; the caller holds its operation lock."""
        try:
            current = self.inventory.get(name)  # as of now, under the VM's lock
        except NotFoundError:
            return None  # it left (a migration handed it off, or it was deleted)
        if current.owner != self.node or self.held(name) is not None:
            return None  # another node's, or a migration drives it
        try:
            observed = self.status(name).state
        except CorralError as exc:
            log.warning("cannot observe VM %s: %s", name, exc)
            return None
        if observed in (RunState.STARTING, RunState.INCOMING, RunState.SHUTTING_DOWN):
            return None  # transitional: a task is working on it
        if observed.value == current.state:
            return None
        reason = (
            "found stopped: its process died or was killed outside corral"
            if observed == RunState.STOPPED
            else f"found {observed.value}"
        )
        if observed == RunState.STOPPED:
            self._release(current)
        self.inventory.set_state(current.name, observed.value, reason)
        return (current.name, current.state, observed.value)

    # -- checkpoints -----------------------------------------------------------------------

    @_changes_vm
    def checkpoint(self, name: str, checkpoint: str, *, suspend: bool) -> CheckpointInfo:
        record = self.local(name)
        self._require_state(name, {RunState.RUNNING, RunState.PAUSED})
        info = self.driver.checkpoint(record.spec, self.layout(name), checkpoint, suspend=suspend)
        if suspend:
            self.inventory.set_state(
                name, RunState.STOPPED.value, f"suspended into checkpoint {checkpoint}"
            )
        else:
            self.inventory.note(name, f"checkpoint {checkpoint} saved")
        return info

    def checkpoints(self, name: str) -> list[CheckpointInfo]:
        self.record(name)
        return self.driver.list_checkpoints(self.layout(name))

    @_changes_vm
    def restore(self, name: str, checkpoint: str) -> RuntimeStatus:
        record = self.local(name)
        status = self.driver.restore(record.spec, self.layout(name), checkpoint)
        reason = f"restored from checkpoint {checkpoint}"
        if self.inventory.set_state(name, RunState.RUNNING.value, reason).state == record.state:
            self.inventory.note(name, reason)
        return status

    def delete_checkpoint(self, name: str, checkpoint: str) -> None:
        record = self.local(name)
        self.driver.delete_checkpoint(record.spec, self.layout(name), checkpoint)
