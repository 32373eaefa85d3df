"""The task kinds every agent runs. Later layers (VMs, migration) add theirs here."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from corral.cluster.maintenance import set_draining
from corral.errors import ConflictError, CorralError, UserInputError
from corral.migration.drain import DrainOptions, run_drain
from corral.migration.options import MigrationOptions
from corral.migration.orchestrator import run_source
from corral.migration.receive_args import ReceiveArgs
from corral.migration.receiver import recover_receiver, run_receiver, target_spec
from corral.migration.recovery import recover_migration
from corral.model import is_valid_name
from corral.tasks.runner import TaskContext, TaskKind
from corral.tasks.store import Task
from corral.vms.service import VmService

if TYPE_CHECKING:
    from corral.agent.node_agent import NodeAgent


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


def _require(args: dict[str, Any], *names: str) -> None:
    for name in names:
        if not isinstance(args.get(name), str) or not is_valid_name(args[name]):
            raise UserInputError(f"args.{name}", "a name (letters, digits, '_', '.', '-')")


def vm_kinds(vms: VmService) -> list[TaskKind]:
    """Long VM operations, run as tasks so the CLI can follow them."""

    def start(ctx: TaskContext) -> dict[str, Any]:
        ctx.progress(phase="starting")
        status = vms.start(ctx.args["vm"])
        ctx.log(f"VM {ctx.args['vm']} {status.state.value} (pid {status.pid})")
        return {"state": status.state.value, "pid": status.pid}

    def stop(ctx: TaskContext) -> dict[str, Any]:
        timeout = float(ctx.args.get("timeout", 30))
        ctx.progress(phase="powering off", message=f"forced after {timeout:g}s")
        graceful = vms.stop(ctx.args["vm"], timeout)
        ctx.log("the guest powered off" if graceful else "the guest was forced off")
        return {"graceful": graceful}

    def checkpoint(ctx: TaskContext) -> dict[str, Any]:
        ctx.progress(phase="saving state")
        info = vms.checkpoint(
            ctx.args["vm"], ctx.args["name"], suspend=bool(ctx.args.get("suspend", False))
        )
        ctx.log(f"checkpoint {info.name}: {info.size_bytes} bytes")
        return info.to_json()

    def restore(ctx: TaskContext) -> dict[str, Any]:
        ctx.progress(phase="restoring")
        status = vms.restore(ctx.args["vm"], ctx.args["name"])
        ctx.log(f"VM {ctx.args['vm']} restored from {ctx.args['name']}")
        return {"state": status.state.value, "pid": status.pid}

    def after_interruption(task: Task) -> str:
        vm = task.args.get("vm", "?")
        try:
            state = vms.status(vm).state.value
        except CorralError as exc:
            state = f"unknown ({exc})"
        return f"the agent stopped during {task.kind}; VM {vm} is now {state}"

    def validate_timeout(args: dict[str, Any]) -> None:
        _require(args, "vm")
        timeout = args.get("timeout", 30)
        if not isinstance(timeout, int | float) or not 0 <= timeout <= 3600:
            raise UserInputError("args.timeout", "seconds between 0 and 3600")

    return [
        TaskKind(
            "vm.start",
            start,
            idempotent=True,
            validate=lambda a: _require(a, "vm"),
            description="start a VM",
        ),
        TaskKind(
            "vm.stop",
            stop,
            idempotent=True,
            validate=validate_timeout,
            description="power a VM off (ACPI), forced after a timeout",
        ),
        TaskKind(
            "checkpoint.create",
            checkpoint,
            idempotent=False,
            validate=lambda a: _require(a, "vm", "name"),
            recover=after_interruption,
            description="save a VM's state and disks",
        ),
        TaskKind(
            "checkpoint.restore",
            restore,
            idempotent=False,
            validate=lambda a: _require(a, "vm", "name"),
            recover=after_interruption,
            description="bring a VM back from a checkpoint",
        ),
    ]


def _validate_send(args: dict[str, Any]) -> None:
    try:
        MigrationOptions.model_validate(args.get("options"))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserInputError(
            "args.options." + ".".join(str(p) for p in first["loc"]), first["msg"]
        ) from exc


def _validate_receive(agent: NodeAgent, args: dict[str, Any]) -> None:
    """A receive task comes from another member: its arguments must be a ReceiveArgs whose
    spec, as this node would run it (copied disks in its own data directory), has every
    host file in this node's image directories (never its state or keys)."""
    try:
        receive = ReceiveArgs.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserInputError(
            "args." + ".".join(str(p) for p in first["loc"]), first["msg"]
        ) from exc
    agent.check_spec_paths(target_spec(receive, agent.vms))
    if agent.draining:
        raise ConflictError(f"{agent.name} is being drained: it takes no VM")


def migration_kinds(agent: NodeAgent) -> list[TaskKind]:
    """The source's migration and the destination's receive task."""
    from corral.agent import migration_desk

    def send(ctx: TaskContext) -> dict[str, Any]:
        return run_source(migration_desk.migration_services(agent), ctx)

    def receive(ctx: TaskContext) -> dict[str, Any]:
        return run_receiver(migration_desk.receiver_services(agent), ctx)

    def recover_send(task: Task) -> str | None:
        options = task.args.get("options", {})
        result = recover_migration(
            migration_desk.migration_services(agent),
            agent.journal,
            str(task.args["migration_id"]),
            str(options.get("vm", "?")),
            str(options.get("target", "")),
        )
        return f"the agent stopped during the migration; recovered: {result['outcome']}"

    def recover_receive(task: Task) -> str | None:
        return recover_receiver(migration_desk.receiver_services(agent), task)

    return [
        TaskKind(
            "migration.send",
            send,
            idempotent=False,
            recover=recover_send,
            validate=_validate_send,
            description="live-migrate a VM from this node (the source's side)",
        ),
        TaskKind(
            "migration.receive",
            receive,
            idempotent=False,
            recover=recover_receive,
            validate=lambda args: _validate_receive(agent, args),
            description="receive a live-migrating VM (the destination's side)",
            from_peers=True,
        ),
    ]


def _validate_drain(args: dict[str, Any]) -> None:
    extra = set(args) - {"options"}
    if extra:
        raise UserInputError(f"args.{sorted(extra)[0]}", "unknown argument of a drain task")
    try:
        DrainOptions.model_validate(args.get("options", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserInputError(
            "args.options." + ".".join(str(p) for p in first["loc"]), first["msg"]
        ) from exc


def drain_kind(agent: NodeAgent) -> TaskKind:
    """Empty this node for maintenance: its migrations are child tasks (migration/drain.py)."""
    from corral.agent import drain_desk

    def drain(ctx: TaskContext) -> dict[str, Any]:
        set_draining(agent.db, True)  # a drain queued by hand marks the node too
        agent.note_own_facts()
        return run_drain(drain_desk.drain_services(agent, ctx.task.id), ctx)

    return TaskKind(
        "node.drain",
        drain,
        idempotent=True,  # it resumes from its progress record
        coordinator=True,
        validate=_validate_drain,
        description="drain this node: live-migrate its running VMs away, re-home stopped ones",
    )


def builtin_kinds(agent: NodeAgent) -> dict[str, TaskKind]:
    kinds = [
        TaskKind(
            "sleep",
            run_sleep,
            idempotent=False,
            validate=_validate_sleep,
            description="wait N seconds in steps, with progress (for checks and tests)",
            from_peers=True,
        ),
        *vm_kinds(agent.vms),
        *migration_kinds(agent),
        drain_kind(agent),
    ]
    return {k.name: k for k in kinds}
