"""The destination side of a live migration: the deferred task the source creates on the
target (CBSD's `cbsd task` on the destination). It starts the VM's QEMU waiting for its
state, listens on this node's migration address (TLS with the cluster's certificates unless
the source opted out), reports `listening` with the port, and succeeds once the VM runs
here and is recorded as this node's. Cancelled or failed, it leaves nothing behind.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import ConflictError, CorralError, NotFoundError
from corral.hypervisors.base import MigrationDriver, MigrationTuning, RunState, VmLayout
from corral.hypervisors.disk_copy_contract import remove_image
from corral.migration.disk_placement import localized
from corral.migration.receive_args import ReceiveArgs
from corral.migration.release import ReleaseBoard
from corral.migration.services import TlsFiles
from corral.model import VmSpec
from corral.tasks.runner import TaskCancelled, TaskContext
from corral.tasks.store import Task
from corral.vms.directories import NodeDirectories
from corral.vms.service import VmService
from corral.waiting import WaitTimeout, wait_for

RELEASE_TIMEOUT = 300.0  # how long an arrived VM waits for the source's word on its disks


@dataclass
class ReceiverServices:
    node: str
    address: str
    vms: VmService
    tls: TlsFiles | None
    free_port: Callable[[str], int] | None = None
    releases: ReleaseBoard = field(default_factory=ReleaseBoard)
    # With the state in etcd: take the VM's ownership over from the source (a
    # compare-and-swap) before it resumes here; raises when the swap is refused or cannot
    # be made, and the VM is then given up here (agent/etcd_membership.py).
    claim: Callable[[str, str], None] | None = None
    give_back: Callable[[str, str], None] | None = None  # undo `claim` (it could not run here)

    @property
    def driver(self) -> MigrationDriver:
        """The one driver handle: the VM service's."""
        return self.vms.driver


def free_port(address: str) -> int:
    """A TCP port nobody listens on at `address` now."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def check_storage(dirs: NodeDirectories, expected: dict[str, str | None]) -> None:
    """:raise ConflictError: a VM directory here no longer carries the identity the source
    saw at preflight (the storage changed in between)."""
    here = dirs.describe()
    for role, identity in expected.items():
        found = here.get(role, {}).get("id")
        if identity is not None and found != identity:
            raise ConflictError(
                f"the {role} directory ({here.get(role, {}).get('path')}) changed since"
                f" preflight: the source saw storage {identity}, this node now has {found}"
            )


def source_node(ctx: TaskContext) -> str | None:
    """The node this VM comes from: the member that created the task (its owner is the
    name on its certificate); None when the local CLI made it (tests, by hand)."""
    owner = ctx.task.owner
    return None if owner.startswith("cli@") else owner


def target_spec(args: ReceiveArgs, vms: VmService) -> VmSpec:
    """The spec as this node runs it: copied disks in its own data directory."""
    copies = {d.index: d.virtual_bytes for d in args.disks}
    return localized(args.spec, copies, vms.dirs.disk_path) if copies else args.spec


def run_receiver(services: ReceiverServices, ctx: TaskContext) -> dict[str, Any]:
    args = ReceiveArgs.model_validate(ctx.args)
    vms = services.vms
    spec = target_spec(args, vms)
    _refuse_if_here(vms, spec.name)
    layout = vms.layout(spec.name)
    check_storage(vms.dirs, {str(role): found for role, found in args.storage.items()})
    tls_dir = None
    if args.tls:
        if services.tls is None:
            raise ConflictError("TLS was asked for but this node has no certificate")
        t = services.tls
        tls_dir = services.driver.migration_tls_dir(layout, "server", t.ca, t.cert, t.key)
    tuning = MigrationTuning(
        tls_dir=tls_dir,
        # The member that created this task (by its certificate) is the only source.
        tls_peer_name=source_node(ctx),
        multifd_channels=args.parallel,
        postcopy=args.postcopy,
    )
    copied = [d.index for d in args.disks]
    created: list[Path] = []
    try:
        for copy in args.disks:
            disk = spec.disks[copy.index]
            services.driver.disk_create(disk.path, disk.format, copy.virtual_bytes)
            created.append(disk.path)
        vms.driver.define(spec)
        port = (services.free_port or free_port)(services.address)
        services.driver.migration_listen(spec, layout, services.address, port, tuning)
        ctx.log(f"listening on {services.address}:{port} (tls={tls_dir is not None})")
        where: dict[str, Any] = {"address": services.address, "port": port}
        if copied:
            where["nbd_port"] = nbd = (services.free_port or free_port)(services.address)
            services.driver.disk_export(
                layout, copied, services.address, nbd, tls_dir=tls_dir, peer_name=source_node(ctx)
            )
            ctx.log(f"serving disks {copied} over NBD on {services.address}:{nbd}")
        ctx.progress(phase="listening", **where)
        gated = bool(copied) or services.claim is not None
        _wait_arrival(services, ctx, args, spec, layout, resume=not gated)
        if copied:
            _finish_copy(services, ctx, args, layout)
        _take_over(services, ctx, args, spec, layout)
    except (CorralError, TaskCancelled, WaitTimeout) as exc:
        services.releases.forget(ctx.task.id)
        services.driver.migration_finalize_target(spec, layout, success=False)
        for path in created:
            remove_image(path)
        if ctx.cancel_requested and not isinstance(exc, TaskCancelled):
            ctx.log(f"stopped on the source's request ({exc})")
            raise TaskCancelled() from exc
        raise
    return _record_arrival(services, ctx, args, spec)


def _refuse_if_here(vms: VmService, name: str) -> None:
    try:
        existing = vms.record(name)
        raise ConflictError(
            f"a VM named {name!r} is already recorded here (owner {existing.owner})"
        )
    except NotFoundError:
        pass
    if vms.status(name).state != RunState.STOPPED:
        raise ConflictError(f"a QEMU for {name} already runs here")


def _record_arrival(
    services: ReceiverServices, ctx: TaskContext, args: ReceiveArgs, spec: VmSpec
) -> dict[str, Any]:
    """The VM runs here: its config (moved with it when the directories are not shared,
    or its disks were copied) and its record say so."""
    vms = services.vms
    spec_file = vms.dirs.spec_file(spec.name)
    if args.disks or not spec_file.exists():
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(spec.model_dump_json(indent=2) + "\n")
    try:
        vms.inventory.add(spec, services.node, RunState.RUNNING.value)
        vms.inventory.note(spec.name, f"migrated in from {args.source}")
    except ConflictError:
        pass  # the source's recovery adopted it here first: the same truth
    ctx.progress(phase="running")
    status = vms.status(spec.name)
    return {"state": status.state.value, "pid": status.pid}


def _wait_arrival(
    services: ReceiverServices,
    ctx: TaskContext,
    args: ReceiveArgs,
    spec: VmSpec,
    layout: VmLayout,
    *,
    resume: bool,
) -> None:
    def arrived() -> bool:
        if ctx.cancel_requested:
            raise TaskCancelled()
        return services.driver.migration_incoming_done(layout, resume=resume)

    wait_for(
        arrived,
        timeout=args.timeout_s,
        what=f"{spec.name} to arrive from {args.source}",
        interval=0.25,
        # Between looks, until the hypervisor's next event (the VM resumed here).
        sleep=lambda seconds: services.driver.migration_wait(layout, seconds),
    )


def _finish_copy(
    services: ReceiverServices, ctx: TaskContext, args: ReceiveArgs, layout: VmLayout
) -> None:
    """The VM arrived, paused: it resumes only once the source says its mirrors ended
    clean (every write is here), and only after the NBD server stopped (no write can come
    from the source once it runs here)."""
    ctx.progress(phase="arrived")
    timeout = min(args.timeout_s, RELEASE_TIMEOUT)
    if not services.releases.wait(ctx.task.id, timeout, lambda: ctx.cancel_requested):
        if ctx.cancel_requested:
            raise TaskCancelled()
        raise WaitTimeout(
            f"the source did not confirm the disk copy within {timeout:g}s; the VM is given up"
            f" here and stays on {args.source}"
        )
    services.driver.disk_export_stop(layout)


def _take_over(
    services: ReceiverServices, ctx: TaskContext, args: ReceiveArgs, spec: VmSpec, layout: VmLayout
) -> None:
    """The VM arrived paused (its disks confirmed, if copied): with the state in etcd, it
    becomes this node's in one compare-and-swap from the source, then resumes. A refused or
    impossible swap gives it up here: the source still owns it."""
    if services.claim is not None:
        try:
            services.claim(spec.name, args.source)
        except CorralError as exc:
            raise ConflictError(f"not resumed here: {exc.message}") from exc
        ctx.log(f"etcd: {spec.name} is now owned by {services.node}")
    if args.disks or services.claim is not None:
        try:
            services.driver.resume(layout)
        except BaseException:
            if services.give_back is not None:  # it never ran here: the source's again
                services.give_back(spec.name, args.source)
            raise


def recover_receiver(services: ReceiverServices, task: Task) -> str | None:
    """After this agent died during a receive: adopt the VM if it runs here, else clean up."""
    args = ReceiveArgs.model_validate(task.args)
    vms = services.vms
    spec = target_spec(args, vms)
    state = vms.status(spec.name).state
    if state == RunState.RUNNING:
        try:
            vms.record(spec.name)
        except NotFoundError:
            vms.inventory.add(spec, services.node, RunState.RUNNING.value)
            vms.inventory.note(spec.name, "adopted after an interrupted migration")
        return None
    services.driver.migration_finalize_target(spec, vms.layout(spec.name), success=False)
    for copy in args.disks:
        remove_image(spec.disks[copy.index].path)
    return (
        f"the agent stopped while receiving {spec.name}; the VM was {state.value} here"
        " and was removed"
    )
