"""The destination side of a live migration: the deferred task the source creates on the
target (CBSD's `cbsd task` on the destination). It starts the VM's QEMU waiting for its
state, listens on this node's migration address (TLS with the cluster's certificates unless
the source opted out), reports `listening` with the port, and succeeds once the VM runs
here and is recorded as this node's. Cancelled or failed, it leaves nothing behind.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.errors import ConflictError, CorralError, NotFoundError
from corral.hypervisors.base import MigrationDriver, MigrationTuning, RunState
from corral.migration.receive_args import ReceiveArgs
from corral.migration.services import TlsFiles
from corral.model import VmSpec
from corral.tasks.runner import TaskCancelled, TaskContext
from corral.tasks.store import Task
from corral.vms.directories import NodeDirectories
from corral.vms.service import VmService
from corral.waiting import WaitTimeout, wait_for


@dataclass
class ReceiverServices:
    node: str
    address: str
    vms: VmService
    tls: TlsFiles | None
    free_port: Callable[[str], int] | None = None

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


def run_receiver(services: ReceiverServices, ctx: TaskContext) -> dict[str, Any]:
    args = ReceiveArgs.model_validate(ctx.args)
    spec = args.spec
    vms = services.vms
    try:
        existing = vms.record(spec.name)
        raise ConflictError(
            f"a VM named {spec.name!r} is already recorded here (owner {existing.owner})"
        )
    except NotFoundError:
        pass
    layout = vms.layout(spec.name)
    if vms.status(spec.name).state != RunState.STOPPED:
        raise ConflictError(f"a QEMU for {spec.name} already runs here")
    check_storage(vms.dirs, {str(role): found for role, found in args.storage.items()})
    vms.driver.define(spec)
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
    port = (services.free_port or free_port)(services.address)
    try:
        services.driver.migration_listen(spec, layout, services.address, port, tuning)
        ctx.log(f"listening on {services.address}:{port} (tls={tls_dir is not None})")
        ctx.progress(phase="listening", address=services.address, port=port)

        def arrived() -> bool:
            if ctx.cancel_requested:
                raise TaskCancelled()
            return services.driver.migration_incoming_done(layout)

        wait_for(
            arrived,
            timeout=args.timeout_s,
            what=f"{spec.name} to arrive from {args.source}",
            interval=0.25,
            # Between looks, until the hypervisor's next event (the VM resumed here).
            sleep=lambda seconds: services.driver.migration_wait(layout, seconds),
        )
    except (CorralError, TaskCancelled, WaitTimeout) as exc:
        services.driver.migration_finalize_target(spec, layout, success=False)
        if ctx.cancel_requested and not isinstance(exc, TaskCancelled):
            ctx.log(f"stopped on the source's request ({exc})")
            raise TaskCancelled() from exc
        raise
    try:
        vms.inventory.add(spec, services.node, RunState.RUNNING.value)
        vms.inventory.note(spec.name, f"migrated in from {args.source}")
    except ConflictError:
        pass  # the source's recovery adopted it here first: the same truth
    ctx.progress(phase="running")
    status = vms.status(spec.name)
    return {"state": status.state.value, "pid": status.pid}


def recover_receiver(services: ReceiverServices, task: Task) -> str | None:
    """After this agent died during a receive: adopt the VM if it runs here, else clean up."""
    spec = VmSpec.model_validate(task.args["spec"])
    vms = services.vms
    state = vms.status(spec.name).state
    if state == RunState.RUNNING:
        try:
            vms.record(spec.name)
        except NotFoundError:
            vms.inventory.add(spec, services.node, RunState.RUNNING.value)
            vms.inventory.note(spec.name, "adopted after an interrupted migration")
        return None
    services.driver.migration_finalize_target(spec, vms.layout(spec.name), success=False)
    return (
        f"the agent stopped while receiving {spec.name}; the VM was {state.value} here"
        " and was removed"
    )
