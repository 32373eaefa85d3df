"""Bringing a lab up, reporting its status and taking it down again.

`up` records its plan in the lab's state file before it builds anything, so `down` removes
exactly what `up` made, even after a crash half-way. `up` on a healthy lab of the same
configuration does nothing; on a broken one it removes the remains and builds afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral import commands
from corral.errors import ConflictError, CorralError, EnvironmentProblem
from corral.lab import agents, gluster, netns, reaping
from corral.lab.plan import LabConfig, LabPlan, down_commands, plan_lab, up_commands

Progress = Callable[[str], None]
BRIDGE_NF_SYSCTLS = (
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
)


@dataclass(frozen=True)
class LinkStatus:
    netns: str
    name: str
    present: bool
    up: bool


@dataclass(frozen=True)
class LabStatus:
    """What of a lab exists now."""

    plan: LabPlan
    namespaces: dict[str, bool]
    links: list[LinkStatus]
    processes: dict[str, list[int]]

    @property
    def healthy(self) -> bool:
        return all(self.namespaces.values()) and all(ln.present and ln.up for ln in self.links)

    @property
    def anything_left(self) -> bool:
        return any(self.namespaces.values())


def require_root() -> None:
    """:raise EnvironmentProblem: not running as root."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("the lab needs root (network namespaces); run it with sudo")


def load_plan(root: Path) -> LabPlan | None:
    """The plan of the lab recorded under `root`, or None when no lab was brought up there."""
    state = root / "lab.json"
    if not state.exists():
        return None
    return plan_lab(LabConfig.from_json(json.loads(state.read_text())))


def _link_states(ns: str) -> dict[str, bool]:
    proc = commands.run(["ip", "-n", ns, "-j", "link", "show"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    return {str(i["ifname"]): "UP" in i.get("flags", []) for i in json.loads(proc.stdout)}


def lab_status(plan: LabPlan) -> LabStatus:
    """Check each namespace and link of `plan` against what exists."""
    present = netns.existing_namespaces()
    namespaces = {ns: ns in present for ns in plan.namespaces}
    links: list[LinkStatus] = []
    states = {ns: _link_states(ns) for ns in plan.namespaces if ns in present}
    for link in plan.links:
        for ns, name in ((plan.fabric_netns, link.fabric_end), (link.netns, link.far_end)):
            found = states.get(ns, {})
            links.append(LinkStatus(ns, name, name in found, found.get(name, False)))
    processes = {ns: netns.pids_in(ns) for ns in plan.namespaces if ns in present}
    return LabStatus(plan, namespaces, links, processes)


def _disable_bridge_netfilter(plan: LabPlan) -> None:
    # br_netfilter, when loaded, would push bridged guest traffic through iptables.
    if not Path("/proc/sys/net/bridge").exists():
        return
    for ns in plan.namespaces:
        for key in BRIDGE_NF_SYSCTLS:
            commands.run(netns.in_netns(ns, ["sysctl", "-q", "-w", f"{key}=0"]), check=False)


def lab_up(config: LabConfig, progress: Progress = lambda _: None) -> LabPlan:
    """Build the lab `config` describes; safe to run again.

    :raise ConflictError: a different lab is already up under the same root.
    """
    plan = plan_lab(config)  # bad settings are reported before anything else
    require_root()
    reaping.become_subreaper()
    recorded = load_plan(config.root)
    if recorded is not None and recorded.config != config:
        raise ConflictError(
            f"a lab with {recorded.config.nodes} nodes (prefix {recorded.config.prefix!r}) is"
            f" already up under {config.root}; run 'corral lab down' first"
        )
    if recorded is not None:
        status = lab_status(plan)
        if status.healthy:
            progress("lab already up")
            return plan
        progress("lab is incomplete; removing its remains first")
        _teardown(plan, progress)
    clashing = netns.existing_namespaces() & set(plan.namespaces)
    if clashing:
        raise ConflictError(
            f"network namespaces {', '.join(sorted(clashing))} exist but this lab did not make"
            " them; remove them or choose another --prefix"
        )
    for directory in plan.directories:
        directory.mkdir(parents=True, exist_ok=True)
    plan.state_file.write_text(json.dumps(config.to_json(), indent=2) + "\n")
    try:
        for argv in up_commands(plan):
            commands.run(argv)
        _disable_bridge_netfilter(plan)
        if config.storage == "glusterfs":
            progress("starting GlusterFS in the storage namespace")
            gluster.start(plan)
    except BaseException:
        _teardown(plan, progress)
        raise
    progress(f"lab up: {len(plan.nodes)} nodes, client {plan.client_address}")
    return plan


def _teardown(plan: LabPlan, progress: Progress) -> None:
    present = netns.existing_namespaces()
    if plan.config.storage == "glusterfs":
        gluster.stop(plan)  # while the nodes' VMs may still have files open: lazy unmount
    # VMs first, while their agents live to reap them; then the agents; then the rest.
    for node in plan.nodes:
        if node.netns in present:
            agent = agents.agent_pid(node)
            vms = [pid for pid in netns.pids_in(node.netns) if pid != agent]
            if vms:
                progress(f"stopping {len(vms)} process(es) in {node.netns}")
                netns.kill_pids(vms)
    for node in plan.nodes:
        if agents.agent_pid(node) is not None:
            progress(f"stopping the agent of {node.name}")
            with contextlib.suppress(CorralError, OSError):
                agents.stop_agent(node)
    for ns in plan.namespaces:
        if ns in present:
            # Only processes inside the lab's own namespaces: ones the lab or its users started.
            pids = netns.pids_in(ns)
            if pids:
                progress(f"stopping {len(pids)} process(es) left in {ns}")
                netns.kill_pids(pids)
    for argv in down_commands(plan, present):
        commands.run(argv, check=False)
    reaping.reap_zombie_children()
    for directory in reversed(plan.directories):
        if directory == plan.config.root:
            continue
        shutil.rmtree(directory, ignore_errors=True)
    plan.state_file.unlink(missing_ok=True)
    # A root that holds something the lab did not make (a cache, say) is left alone.
    with contextlib.suppress(OSError):
        plan.config.root.rmdir()


def lab_down(root: Path, progress: Progress = lambda _: None) -> bool:
    """Remove the lab recorded under `root`; False when there was none."""
    require_root()
    plan = load_plan(root)
    if plan is None:
        return False
    _teardown(plan, progress)
    progress("lab down")
    return True
