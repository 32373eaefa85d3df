"""Live migration end to end: real agents, real QEMU (TCG), real TLS, in a three-node lab.
The guest keeps its counter, its TCP connection, its disk sequence and its address."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.commands import run
from corral.errors import WaitTimeout
from corral.lab import agents, netns
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.migration_helpers import CounterClient, PingMeter, migrate
from tests.integration.vm_helpers import (
    console_lines,
    corral,
    corral_json,
    corral_ok,
    counters,
    guest_args,
)
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cmig", 3) as plan:
        yield plan


def boot(
    lab: LabPlan,
    image: GuestImage,
    name: str,
    host: int,
    *extra: str,
    node: LabNode | None = None,
    dirty_mib: int = 0,
    memory: int = 256,
) -> str:
    node = node or lab.nodes[0]
    ip = str(lab.guest_address(host).ip)
    corral_ok(
        node,
        "vm",
        "create",
        name,
        "--memory",
        str(memory),
        "--nic",
        "br0",
        *guest_args(image, f"{ip}/24", dirty_mib=dirty_mib),
        *extra,
        "--start",
    )
    wait_for(
        lambda: any("BOOTED" in ln for ln in console_lines(node, name)),
        timeout=120,
        what=f"{name} to boot",
    )
    return ip


def _runtime(node: LabNode, vm: str) -> Any:
    with agents.client(node) as c:
        return c.get(f"/runtime/{vm}")


def where_it_runs(lab: LabPlan, vm: str) -> list[str]:
    return [n.name for n in lab.nodes if _runtime(n, vm)["observed"] != "stopped"]


def test_an_idle_guest_goes_there_and_back_keeping_everything(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2, _ = lab.nodes
    ip = boot(lab, guest_image, "idle", 41)
    wait_for(
        lambda: (
            run(
                netns.in_netns(lab.client_netns, ["ping", "-c1", "-W1", ip]), check=False
            ).returncode
            == 0
        ),
        timeout=60,
        what="ping",
    )
    stream = CounterClient.connect(lab, ip)
    wait_for(lambda: len(stream.counters) >= 3, timeout=30, what="the counter stream")
    pings = PingMeter.start(lab, ip)
    try:
        code, lines, err = migrate(node1, "idle", "node2")
        assert code == 0, err
        there = lines[-1]
        assert there["event"] == "done"
        assert there["tls"] is True
        # QEMU's final counters, not the zeros of the moment it says completed (7.2 sets
        # the state before it computes them): a pause and a total time were measured.
        assert there["downtime_ms"] is not None
        assert there["downtime_ms"] > 0
        assert there["qemu_total_ms"] > 0
        assert where_it_runs(lab, "idle") == ["node2"]
        assert corral_json(node2, "vm", "show", "idle")["owner"] == "node2"
        assert corral(node1, "vm", "show", "idle", "--node", "node1").returncode == 3
        seen = len(stream.counters)
        wait_for(
            lambda: len(stream.counters) > seen + 5,
            timeout=30,
            what="the stream to go on from node2",
        )
        code, lines, err = migrate(node1, "idle", "node1")  # asked on node1, runs on node2
        assert code == 0, err
        assert where_it_runs(lab, "idle") == ["node1"]
        seen = len(stream.counters)
        wait_for(
            lambda: len(stream.counters) > seen + 5,
            timeout=30,
            what="the stream to go on from node1",
        )
    finally:
        sent, received = pings.stop()
    lost = sent - received
    print(f"ping across two migrations: {sent} sent, {lost} lost")
    assert received > 0
    assert lost < sent * 0.2
    # The TCP connection survived both moves and the counter never went back.
    assert not stream.closed
    assert stream.continuous  # not one line lost or repeated
    stream.close()
    lines_now = console_lines(node1, "idle")
    assert sum("BOOTED" in ln for ln in lines_now) == 1  # booted once, never again
    assert not [ln for ln in lines_now if ln.startswith("DISKERR")]
    before = counters(lines_now)[-1]
    wait_for(
        lambda: any(
            ln.startswith("DISKSEQ") for ln in console_lines(node1, "idle")[len(lines_now) :]
        ),
        timeout=60,
        what="disk writes after the moves",
    )
    assert counters(console_lines(node1, "idle"))[-1].seq > before.seq


def test_without_insecure_the_stream_is_tls_and_with_it_plain(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2, _ = lab.nodes
    boot(lab, guest_image, "plain", 42)
    code, lines, err = migrate(node1, "plain", "node2", "--insecure", "--parallel", "2")
    assert code == 0, err
    assert lines[-1]["tls"] is False
    assert lines[-1]["channels"] == 2
    tasks = corral_json(node2, "task", "list")
    receive = next(t for t in tasks if t["kind"] == "migration.receive")
    log = corral_ok(node2, "task", "logs", receive["id"])
    assert "tls=False" in log
    # Back with TLS over two channels: the agents' relay carries the main stream and both
    # multifd channels, in their order (QEMU takes the first connection as the main one).
    code, lines, err = migrate(node2, "plain", "node1", "--parallel", "2")
    assert code == 0, err
    assert lines[-1]["tls"] is True
    assert lines[-1]["channels"] == 2
    receive = next(
        t for t in corral_json(node1, "task", "list") if t["kind"] == "migration.receive"
    )
    assert "tls=True" in corral_ok(node1, "task", "logs", receive["id"])
    corral_ok(node1, "vm", "kill", "plain")
    corral_ok(node1, "vm", "delete", "plain")


def test_cancel_in_mid_transfer_leaves_the_vm_on_the_source_only(
    lab: LabPlan,
    guest_image: GuestImage,
) -> None:
    node1, node2, _ = lab.nodes
    boot(lab, guest_image, "slow", 43, dirty_mib=32)
    started = time.monotonic()
    holder: dict[str, subprocess.CompletedProcess[str]] = {}

    def background() -> None:
        holder["out"] = corral(node1, "migrate", "slow", "node2", "--bandwidth", "4", "--json")

    thread = threading.Thread(target=background)
    thread.start()

    def transferring() -> bool:
        tasks = corral_json(node1, "task", "list")
        send = [t for t in tasks if t["kind"] == "migration.send" and t["state"] == "running"]
        return (
            bool(send)
            and send[0]["progress"].get("phase") == "transfer"
            and send[0]["progress"].get("done", 0) > 0
        )

    wait_for(transferring, timeout=60, what="the transfer to start")
    # While it migrates, the VM is held: other operations are refused, naming the migration,
    # and queue nothing (a restore here could run a second copy beside the target's).
    tasks_before = len(corral_json(node1, "task", "list"))
    for args in (
        ("vm", "stop", "slow"),
        ("checkpoint", "restore", "slow", "c1"),
        ("migrate", "slow", "--recover"),
    ):
        refused = corral(node1, *args)
        assert refused.returncode == 4, refused.stderr
        assert "slow is migrating to node2" in refused.stderr
    assert len(corral_json(node1, "task", "list")) == tasks_before
    assert corral_json(node1, "vm", "show", "slow")["held"] == "migrating to node2"
    assert "held         migrating to node2" in corral_ok(node1, "vm", "show", "slow")
    listed = {vm["name"]: vm["held"] for vm in corral_json(node1, "vm", "list")}
    assert listed["slow"] == "migrating to node2"
    corral_ok(node1, "migrate", "slow", "--cancel")
    thread.join(timeout=120)
    out = holder["out"]
    assert out.returncode == 12, out.stderr
    assert time.monotonic() - started < 120
    assert where_it_runs(lab, "slow") == ["node1"]
    info = corral_json(node1, "vm", "show", "slow")
    assert (info["owner"], info["observed"]) == ("node1", "running")
    assert corral(node2, "vm", "show", "slow", "--node", "node2").returncode == 3
    receive = next(
        t for t in corral_json(node2, "task", "list") if t["kind"] == "migration.receive"
    )
    assert receive["state"] == "cancelled"
    corral_ok(node1, "vm", "kill", "slow")
    corral_ok(node1, "vm", "delete", "slow")


def test_recover_reports_where_the_vm_runs_and_keeps_it_there(lab: LabPlan) -> None:
    node1 = lab.nodes[0]
    answer = corral_json(node1, "migrate", "idle", "--recover")
    assert answer["outcome"] == "runs on node1"
    assert where_it_runs(lab, "idle") == ["node1"]
    assert corral_json(node1, "vm", "show", "idle")["observed"] == "running"


def test_a_guest_that_does_not_converge_is_aborted_and_stays_on_the_source(
    lab: LabPlan,
    guest_image: GuestImage,
) -> None:
    node1 = lab.nodes[0]
    boot(lab, guest_image, "hot", 44, dirty_mib=64)
    wait_for(
        lambda: any("DIRTYING" in ln for ln in console_lines(node1, "hot")),
        timeout=60,
        what="the dirtier",
    )
    code, _, err = migrate(
        node1, "hot", "node2", "--bandwidth", "16", "--no-auto-converge", "--timeout", "8"
    )
    assert code == 14, err
    assert "aborted by policy: not complete after 8s" in err
    assert where_it_runs(lab, "hot") == ["node1"]
    assert corral_json(node1, "vm", "show", "hot")["observed"] == "running"
    latest = corral_json(node1, "migrations", "list")[0]
    assert latest["phase"] == "rolled-back"


def test_the_same_guest_completes_when_the_policy_may_force_it(lab: LabPlan) -> None:
    node1 = lab.nodes[0]
    code, lines, err = migrate(
        node1, "hot", "node2", "--bandwidth", "16", "--timeout", "8", "--on-timeout", "force"
    )
    assert code == 0, err
    actions = lines[-1]["policy_actions"]
    assert any(a.startswith("forcing completion") for a in actions), actions
    assert where_it_runs(lab, "hot") == ["node2"]
    node2 = lab.nodes[1]
    before = counters(console_lines(node2, "hot"))
    wait_for(
        lambda: counters(console_lines(node2, "hot"))[-1].seq > before[-1].seq + 3,
        timeout=30,
        what="the guest to run on node2",
    )
    corral_ok(node2, "vm", "kill", "hot")
    corral_ok(node2, "vm", "delete", "hot")


def test_preflight_refuses_with_every_reason(lab: LabPlan, guest_image: GuestImage) -> None:
    node1, node2, node3 = lab.nodes
    out = corral(node1, "migrate", "idle", "node9")
    assert out.returncode == 4
    assert "[target-unknown]" in out.stderr
    # node3 goes offline, then comes back offering fewer CPU models and a local system dir.
    agents.stop_agent(node3)
    wait_for(
        lambda: (
            not next(n for n in corral_json(node1, "node", "list") if n["name"] == "node3")[
                "online"
            ]
        ),
        timeout=30,
        what="node1 to see node3 offline",
    )
    out = corral(node1, "migrate", "idle", "node3")
    assert out.returncode == 4
    assert "[target-offline]" in out.stderr
    agents.start_agent(
        lab, node3, extra={"cpu_models": ["qemu64"], "system_dir": str(node3.local_dir / "system")}
    )
    wait_for(
        lambda: all(n["online"] for n in corral_json(node1, "node", "list")),
        timeout=30,
        what="node3 back online",
    )
    # A bridge only node1 has.
    run(["ip", "-n", node1.netns, "link", "add", "brx", "type", "bridge"])
    run(["ip", "-n", node1.netns, "link", "set", "brx", "up"])
    boot(lab, guest_image, "picky", 45, "--cpu-model", "Westmere", "--nic", "brx")
    out = corral(node1, "migrate", "picky", "node3")
    assert out.returncode == 4
    for code in ("[cpu-model]", "[storage-not-shared]", "[bridge]"):
        assert code in out.stderr, out.stderr
    assert "system directory is not shared" in out.stderr
    plan = corral(node1, "migrate", "picky", "node3", "--plan", "--json")
    assert plan.returncode == 4
    assert {"cpu-model", "storage-not-shared", "bridge"} <= {
        r["code"] for r in json.loads(plan.stdout)["reasons"]
    }
    # A VM of that name recorded on the target (as after a split).
    spec = corral_json(node1, "vm", "show", "picky")["spec"]
    db = sqlite3.connect(node2.local_dir / "state" / "corral.db")
    with db:
        db.execute(
            "INSERT INTO vms VALUES ('picky', 'node2', ?, 'stopped', 0)", (json.dumps(spec),)
        )
    try:
        out = corral(node1, "migrate", "picky", "node2")
        assert out.returncode == 4
        assert "[name-conflict]" in out.stderr
    finally:
        with db:
            db.execute("DELETE FROM vms WHERE name = 'picky'")
        db.close()
    # More memory than the target has free (QEMU allocates lazily, so it starts here).
    total = corral_json(node2, "node", "list")[0]["facts"]["memory_total_mib"]
    corral_ok(node1, "vm", "create", "huge", "--memory", str(total - 128), "--start")
    out = corral(node1, "migrate", "huge", "node2")
    assert out.returncode == 4
    assert "[memory]" in out.stderr
    for vm in ("picky", "huge"):
        corral_ok(node1, "vm", "kill", vm)
        corral_ok(node1, "vm", "delete", vm)
    assert where_it_runs(lab, "idle") == ["node1"]  # nothing moved


def test_post_copy_finishes_a_guest_that_would_not_converge(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1, node2, _ = lab.nodes
    boot(lab, guest_image, "pc", 46, dirty_mib=64)
    wait_for(
        lambda: any("DIRTYING" in ln for ln in console_lines(node1, "pc")),
        timeout=60,
        what="the dirtier",
    )
    code, lines, err = migrate(
        node1,
        "pc",
        "node2",
        "--bandwidth",
        "16",
        "--postcopy",
        "--no-auto-converge",
        "--timeout",
        "8",
        "--on-timeout",
        "force",
    )
    assert code == 0, err
    actions = lines[-1]["policy_actions"]
    assert any(a.startswith("switched to post-copy") for a in actions), actions
    assert where_it_runs(lab, "pc") == ["node2"]
    before = counters(console_lines(node2, "pc"))
    wait_for(
        lambda: counters(console_lines(node2, "pc"))[-1].seq > before[-1].seq + 3,
        timeout=30,
        what="the guest to run on node2",
    )
    assert not [ln for ln in console_lines(node2, "pc") if ln.startswith("DISKERR")]
    corral_ok(node2, "vm", "kill", "pc")
    corral_ok(node2, "vm", "delete", "pc")


def test_mixed_disks_copy_the_local_one_and_leave_the_shared_one(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    """disk 0 on the shared data directory, disk 1 in node1's own scratch directory: only
    disk 1 is copied (into node2's data directory, here the shared one), and the guest's
    pattern across it reads back whole on node2."""
    node1, node2 = lab.nodes[:2]
    local = agents.scratch_dir(node1) / "mixed-1.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(local), "16M"])
    ip = str(lab.guest_address(70).ip)
    corral_ok(
        node1,
        "vm",
        "create",
        "mixed",
        "--nic",
        "br0",
        "--kernel",
        str(guest_image.kernel),
        "--initrd",
        str(guest_image.initrd),
        "--cmdline",
        guest_cmdline(ip=f"{ip}/24", disk="vda", pattern="vdb"),
        "--disk",
        "16",
        "--disk-path",
        str(local),
        "--start",
    )
    before = corral_json(node1, "vm", "show", "mixed")["spec"]["disks"]

    def passes(node: LabNode) -> list[str]:
        return [ln for ln in console_lines(node, "mixed") if ln.startswith(("PATPASS", "PATERR"))]

    wait_for(lambda: passes(node1), timeout=180, what="a first pattern pass")
    code, lines, err = migrate(node1, "mixed", node2.name)
    assert code == 4
    assert "[local-disks] disk 1" in err
    assert "disk 0" not in err  # on shared storage: nothing to copy
    code, lines, err = migrate(node1, "mixed", node2.name, "--with-local-disks")
    assert code == 0, err
    assert lines[-1]["disks"]["copied"] == 1
    after = corral_json(node2, "vm", "show", "mixed")["spec"]["disks"]
    assert after[0]["path"] == before[0]["path"]  # the shared disk stays where it is
    assert Path(after[1]["path"]).parent.name == "mixed"  # node2's data directory
    assert Path(after[1]["path"]).exists()
    assert not local.exists()  # node1's own copy went after the success
    try:
        wait_for(lambda: len(passes(node2)) >= 2, timeout=180, what="two passes on node2")
    except WaitTimeout:  # seen once in a full run (2026-12-03): say what the guest was doing
        shown = corral_json(node2, "vm", "show", "mixed")
        tail = console_lines(node2, "mixed")[-15:]
        raise AssertionError(
            f"no two passes on node2: observed {shown['observed']}, console tail {tail}"
        ) from None
    assert not [ln for ln in passes(node2) if ln.startswith("PATERR")]
    assert not [ln for ln in console_lines(node2, "mixed") if ln.startswith("DISKERR")]
    corral_ok(node2, "vm", "kill", "mixed")
    corral_ok(node2, "vm", "delete", "mixed")


def test_without_a_node_corral_places_the_vm_on_the_best_member(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    node1 = lab.nodes[0]
    boot(lab, guest_image, "placed", 72, memory=128)
    out = corral(node1, "migrate", "placed", "--plan", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    ranking = plan["ranking"]
    assert {c["node"] for c in ranking} == {"node2", "node3"}  # every other member
    allowed = [c for c in ranking if c["allowed"]]
    assert allowed, ranking
    assert ranking[: len(allowed)] == allowed  # those that pass first, best first
    assert plan["target"] == allowed[0]["node"]
    assert all(c["reasons"] for c in ranking[len(allowed) :])  # a refusal says why
    frees = [c["free_after_mib"] for c in allowed]
    assert frees == sorted(frees, reverse=True)
    moved = corral(node1, "migrate", "placed", "--json")  # no node named
    assert moved.returncode == 0, moved.stderr
    summary = json.loads(moved.stdout.splitlines()[-1])
    assert summary["target"] in {c["node"] for c in allowed}
    assert where_it_runs(lab, "placed") == [summary["target"]]
    corral_ok(lab.node(summary["target"]), "vm", "kill", "placed")
