"""Preflight as the source runs it: gather what it judges (this node's VM and facts, the
target's facts asked now, the local disks' sizes, the VM's checkpoints) and judge it, with
the hypervisor's refusals of the options asked for.

Must never import: agent, cli, lab.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from corral.errors import ConflictError, CorralError, NotFoundError
from corral.hypervisors.disk_copy_contract import DiskUsage
from corral.migration.disk_placement import local_indexes
from corral.migration.options import MigrationOptions
from corral.migration.placement import Candidate, candidate, no_target_reasons, rank
from corral.migration.preflight import NodeView, PreflightInput, PreflightReason, preflight
from corral.migration.services import MigrationServices
from corral.model import AUTO


class PreflightFailed(ConflictError):
    """The migration may not start; `details` lists every reason."""

    def __init__(self, reasons: list[PreflightReason]) -> None:
        super().__init__(
            "migration refused: " + "; ".join(f"[{r.code}] {r.message}" for r in reasons)
        )
        self.details = [r.to_json() for r in reasons]


def gather(services: MigrationServices, opts: MigrationOptions) -> PreflightInput:
    """What preflight judges, asked of this node and (freshly) of the target."""
    try:
        spec = services.vms.local(opts.vm).spec
        observed = services.vms.status(opts.vm).state.value
    except NotFoundError:
        spec, observed = None, "missing"
    target = services.target_view(opts.target) if opts.target != services.node else None
    has_vm = False
    if target is not None and target.online:
        try:
            with services.peer(opts.target) as client:
                client.get(f"/vms/{opts.vm}")
            has_vm = True
        except NotFoundError:
            has_vm = False
    source = NodeView(services.node, services.local_facts())
    usage: dict[int, DiskUsage] = {}
    checkpoints: tuple[str, ...] = ()
    if spec is not None and target is not None:
        layout = services.vms.layout(opts.vm)
        checkpoints = tuple(c.name for c in services.driver.list_checkpoints(layout))
        storage = source.facts.get("storage", {}), target.facts.get("storage", {})
        for index in local_indexes(spec, *storage):
            disk = spec.disks[index]
            with contextlib.suppress(CorralError, OSError):  # unknown: said so
                usage[index] = services.driver.disk_usage(disk.path, disk.format)
    return PreflightInput(
        opts.vm,
        spec,
        observed,
        source,
        opts.target,
        target,
        has_vm,
        disk_usage=usage,
        checkpoints=checkpoints,
        with_local_disks=opts.with_local_disks,
        drop_checkpoints=opts.drop_checkpoints,
    )


def check(services: MigrationServices, opts: MigrationOptions) -> list[PreflightReason]:
    return _judge(services, opts, gather(services, opts))


def _judge(
    services: MigrationServices, opts: MigrationOptions, inp: PreflightInput
) -> list[PreflightReason]:
    reasons = preflight(inp, services.driver.compatible)
    refused = services.driver.option_refusals(
        postcopy=opts.postcopy, channels=opts.parallel, local_disks=opts.with_local_disks
    )
    if services.handoff_in_etcd and not services.driver.arrives_paused:
        refused.append(
            (
                "state-handoff",
                f"with the state in etcd the VM's ownership moves before it runs on the target;"
                f" {services.driver.name}'s receive runs it by itself, so it cannot migrate here"
                " (use --state gossip on these nodes)",
            )
        )
    return reasons + [PreflightReason(code, text, services.node) for code, text in refused]


def candidates(services: MigrationServices, opts: MigrationOptions) -> list[Candidate]:
    """Every other member judged as a target for `opts.vm` (asked at once), ranked."""
    others = [name for name in services.members() if name != services.node]

    def judged(name: str) -> Candidate:
        asked = opts.model_copy(update={"target": name})
        inp = gather(services, asked)
        memory = inp.spec.memory_mib if inp.spec is not None else 0
        facts = inp.target.facts if inp.target is not None else {}
        return candidate(name, _judge(services, asked, inp), facts, memory)

    if not others:
        return []
    with ThreadPoolExecutor(min(8, len(others)), thread_name_prefix="placement") as pool:
        return rank(list(pool.map(judged, others)))


def place(services: MigrationServices, opts: MigrationOptions) -> MigrationOptions:
    """`opts` with its target chosen when it is `auto` (as it is otherwise).

    :raise PreflightFailed: no member may take the VM, with every member's reasons.
    """
    if opts.target != AUTO:
        return opts
    ranked = candidates(services, opts)
    if not ranked or not ranked[0].allowed:
        raise PreflightFailed(no_target_reasons(opts.vm, ranked))
    return opts.model_copy(update={"target": ranked[0].node})
