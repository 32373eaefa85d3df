"""corral on bhyve: two lab nodes whose agents drive the bhyve driver on simulated FreeBSD
hosts (tests/bhyve_sim). A migration goes through the same preflight, deferred receive task,
TLS tunnel and handoff as with QEMU; what bhyve cannot do is refused at preflight."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import commands
from corral.lab import agents, netns
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig, LabNode, LabPlan
from corral.waiting import wait_for
from tests.bhyve_sim import profile
from tests.bhyve_sim.host import SimHost, install
from tests.integration.migration_helpers import migrate
from tests.integration.vm_helpers import console_lines, corral, corral_json, corral_ok, counters

pytestmark = [pytest.mark.lab]
SPEC = """
memory_mib = 32
[cpu]
count = 2
[cpu.topology]
sockets = 1
cores = 2
threads = 1
[[disks]]
size_mib = 8
format = "raw"
[[nics]]
bridge = "br0"
"""


def taps_on_bridge(node: LabNode) -> list[str]:
    """The tap (tun-kind) interfaces on the node's bridge, in its namespace."""
    argv = ["ip", "-n", node.netns, "-d", "-j", "link", "show", "master", node.bridge]
    links = json.loads(commands.run(argv).stdout or "[]")
    return [
        str(link["ifname"]) for link in links if link.get("linkinfo", {}).get("info_kind") == "tun"
    ]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabPlan, list[SimHost]]]:
    root = tmp_path_factory.mktemp("cbhv") / "lab"
    plan = lab_up(LabConfig(nodes=2, prefix="cbhv", root=root))
    try:
        hosts = []
        for node in plan.nodes:
            host = install(node.local_dir / "freebsd")
            extra: dict[str, object] = {"hypervisor": "bhyve", "bhyve_root": str(host.root)}
            env = profile.agent_env(host, calls_of(node))
            agents.start_agent(plan, node, extra=extra, env=env)
            hosts.append(host)
        agents.form_cluster(plan)
        yield plan, hosts
    finally:
        lab_down(root)


def calls_of(node: LabNode) -> Path:
    """Where the node's agent writes what it tried that FreeBSD has not."""
    return node.local_dir / "linux-calls.log"


def seq_after(node: LabNode, vm: str, seq: int) -> int:
    def past() -> int | None:
        found = counters(console_lines(node, vm, 50))
        return found[-1].seq if found and found[-1].seq > seq else None

    return wait_for(past, timeout=60, what=f"{vm} on {node.name} to count past {seq}")


def test_a_vm_created_on_bhyve_migrates_and_comes_back(
    lab: tuple[LabPlan, list[SimHost]], tmp_path: Path
) -> None:
    plan, _ = lab
    node1, node2 = plan.nodes
    spec = tmp_path / "vm.toml"
    spec.write_text(SPEC)
    corral_ok(node1, "vm", "create", "bsd", "--spec", str(spec), "--start")
    assert corral_json(node1, "node", "list")[0]["facts"]["hypervisor"] == "bhyve"
    before = seq_after(node1, "bsd", 2)
    # bhyve opens its NIC's backend by the device name: a FreeBSD-style tapN, on the bridge.
    [tap] = taps_on_bridge(node1)
    assert tap.startswith("tap")
    assert tap[3:].isdigit()

    code, lines, stderr = migrate(node1, "bsd", "node2")
    assert code == 0, stderr
    summary = lines[-1]
    assert summary["hypervisor"] == "bhyve"
    assert summary["tls"] is True
    assert summary["downtime_ms"] is None  # bhyve does not say
    shown = corral_json(node2, "vm", "show", "bsd")
    assert shown["owner"] == "node2"
    assert shown["observed"] == "running"
    assert corral(node1, "vm", "show", "bsd", "--node", "node1").returncode != 0
    assert seq_after(node2, "bsd", before) > before
    console = console_lines(node2, "bsd")
    assert not [ln for ln in console if "BOOTED" in ln]  # it arrived running: no boot here
    assert taps_on_bridge(node1) == []  # the source gave its tap back
    [arrived] = taps_on_bridge(node2)
    assert arrived.startswith("tap")
    tunnel = json.loads((node2.local_dir / "run" / "vms" / "bsd" / "receive.json").read_text())
    assert tunnel["peer"] == str(node1.migration_address.ip)  # over the migration network
    phases = [
        s["phase"]
        for s in corral_json(node1, "migrations", "show", summary["migration_id"])["journal"]
    ]
    assert phases[-1] == "succeeded"
    assert "handoff" in phases

    back = corral(node2, "migrate", "bsd", "node1", "--insecure")
    assert back.returncode == 0, back.stderr
    assert corral_json(node1, "vm", "show", "bsd")["observed"] == "running"


def test_preflight_refuses_what_bhyve_cannot_do(
    lab: tuple[LabPlan, list[SimHost]], tmp_path: Path
) -> None:
    plan, hosts = lab
    node1 = plan.nodes[0]
    spec = tmp_path / "vm.toml"
    spec.write_text(SPEC)
    if corral(node1, "vm", "show", "bsd", "--node", "node1").returncode != 0:
        corral_ok(node1, "vm", "create", "bsd", "--spec", str(spec), "--start")
    out = corral(node1, "migrate", "bsd", "node2", "--postcopy", "--parallel", "2")
    assert out.returncode == 4, out.stderr
    assert "[postcopy] bhyve has no post-copy" in out.stderr
    assert "[parallel]" in out.stderr
    out = corral(node1, "migrate", "bsd", "node2", "--with-local-disks")
    assert out.returncode == 4, out.stderr
    assert "[disk-copy] bhyve's migration sends memory and devices only" in out.stderr
    hosts[1].configure(sysctl={"hw.model": "AMD EPYC 7302 16-Core Processor"})
    try:
        out = corral(node1, "migrate", "bsd", "node2")
        assert out.returncode == 4, out.stderr
        assert "[cpu] bhyve cannot mask CPUID" in out.stderr
    finally:
        hosts[1].configure(sysctl={"hw.model": hosts[0].config()["sysctl"]["hw.model"]})
    assert corral_json(node1, "vm", "show", "bsd")["observed"] == "running"


def test_a_checkpoint_and_the_console_across_an_agent_restart(
    lab: tuple[LabPlan, list[SimHost]], tmp_path: Path
) -> None:
    """On the FreeBSD profile: a checkpoint is saved and restored (bhyvectl --suspend, sparse
    copies, bhyve -r); the console logger outlives an agent restart (no line lost while the
    agent is down); more vCPUs than the target's hw.vmm.maxcpu is refused at preflight."""
    plan, hosts = lab
    node1 = plan.nodes[0]
    spec = tmp_path / "vm.toml"
    spec.write_text(SPEC)
    owner = (
        corral_json(node1, "vm", "show", "bsd")["owner"]
        if corral(node1, "vm", "show", "bsd").returncode == 0
        else None
    )
    if owner is None:
        corral_ok(node1, "vm", "create", "bsd", "--spec", str(spec), "--start")
        owner = "node1"
    node = next(n for n in plan.nodes if n.name == owner)
    corral_ok(node, "checkpoint", "create", "bsd", "--name", "c1")
    [info] = corral_json(node, "checkpoint", "list", "bsd")
    assert info["hypervisor"] == "bhyve"
    saved = seq_after(node, "bsd", 0)
    later = seq_after(node, "bsd", saved + 20)
    corral_ok(node, "checkpoint", "restore", "bsd", "c1")
    assert seq_after(node, "bsd", 0) < later  # it went back
    assert corral_json(node, "vm", "show", "bsd")["observed"] == "running"

    index = plan.nodes.index(node)
    log = node.local_dir / "run" / "vms" / "bsd" / "console.log"
    mark = log.stat().st_size
    agents.stop_agent(node)

    def logged_past(seq: int) -> int | None:
        found = counters(log.read_text(errors="replace").splitlines())
        return found[-1].seq if found and found[-1].seq > seq else None

    down = wait_for(lambda: logged_past(0), timeout=30, what="the console log")
    wait_for(lambda: logged_past(down + 10), timeout=30, what="lines while the agent is down")
    extra: dict[str, object] = {"hypervisor": "bhyve", "bhyve_root": str(hosts[index].root)}
    agents.start_agent(plan, node, extra=extra, env=profile.agent_env(hosts[index], calls_of(node)))
    seq_after(node, "bsd", down + 20)  # and the restarted agent serves it
    with log.open("rb") as text:
        text.seek(mark)
        seqs = [c.seq for c in counters(text.read().decode(errors="replace").splitlines()[1:])]
    assert len(seqs) > 20
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none missing, none twice

    other = plan.nodes[1 - index]
    hosts[1 - index].configure(sysctl={"hw.vmm.maxcpu": "1"})
    try:
        wait_for(
            lambda: corral(node, "migrate", "bsd", other.name, "--plan").returncode == 4,
            timeout=30,
            what="the target's new vCPU limit to reach preflight",
        )
        out = corral(node, "migrate", "bsd", other.name)
        assert out.returncode == 4, out.stderr
        assert "[vcpus] the VM has 2 vCPUs; bhyve on the target allows 1" in out.stderr
    finally:
        hosts[1 - index].configure(sysctl={"hw.vmm.maxcpu": "2"})


def test_the_guest_is_reached_on_its_new_node_at_once(
    lab: tuple[LabPlan, list[SimHost]], tmp_path: Path
) -> None:
    """After a bhyve migration the target announces the guest's MAC (a gratuitous RARP per
    NIC): a client pinging the guest through the lab's switch reaches it on the new node
    within 100 ms of the switchover. The simulated guest never sends on its own, so without
    the announcement the switch would keep sending to the old node."""
    plan, hosts = lab
    node1, node2 = plan.nodes
    address = plan.guest_address(20).ip
    for host in hosts:
        host.configure(guests={"pinged": {"ip": str(address)}})
    spec = tmp_path / "vm.toml"
    spec.write_text(SPEC)
    corral_ok(node1, "vm", "create", "pinged", "--spec", str(spec), "--start")
    mac = corral_json(node1, "vm", "show", "pinged")["spec"]["nics"][0]["mac"]
    log = tmp_path / "ping.log"
    argv = ["ping", "-D", "-n", "-i", "0.01", "-W", "1", str(address)]
    with log.open("w") as out:
        pinger = subprocess.Popen(
            netns.in_netns(plan.client_netns, argv), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "bytes from" in log.read_text(), timeout=30, what="the first reply")
        code, _, stderr = migrate(node1, "pinged", "node2")
        assert code == 0, stderr
        status = node2.local_dir / "run" / "vms" / "pinged" / "receive.json"

        def announced() -> dict[str, object] | None:
            found = json.loads(status.read_text())
            return found if "announced" in found else None

        tunnel = wait_for(announced, timeout=10, what="the announcement's rounds")
        switchover = float(str(tunnel["finished"]))
        assert tunnel["announced"] == [mac]
        assert tunnel["announce_errors"] == []

        def first_reply_after() -> float | None:
            for line in log.read_text().splitlines():
                if "bytes from" in line and line.startswith("["):
                    at = float(line[1 : line.index("]")])
                    if at > switchover:
                        return at
            return None

        reached = wait_for(first_reply_after, timeout=30, what="a reply from the new node")
    finally:
        pinger.terminate()
        pinger.wait(timeout=10)
    assert reached - switchover <= 0.1, f"reached {reached - switchover:.3f} s after"
    assert corral_json(node2, "vm", "show", "pinged")["observed"] == "running"
    corral_ok(node2, "vm", "stop", "pinged")


def test_the_agents_reached_no_linux_only_call(lab: tuple[LabPlan, list[SimHost]]) -> None:
    """Last in this module: everything above (facts, heartbeats, preflight, VM lifecycle,
    console, migration) ran on the simulated FreeBSD profile, where /proc, /sys and every
    program outside the simulated root are refused and written down. Nothing was."""
    plan, _ = lab
    for node in plan.nodes:
        assert profile.linux_calls(calls_of(node)) == [], node.name
        log = (node.local_dir / "agent.log").read_text(errors="replace")
        assert "not on FreeBSD" not in log
