"""One fault scenario: a guest writing its disk sequence and streaming its counter to a
client, a migration started in the background, a fault injected at a named phase, and the
outcome checked against what really runs. Outcomes can be appended to a report
(CORRAL_FAULTS_REPORT) for `make faults`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.commands import pid_alive, run
from corral.lab import agents
from corral.lab.image import GuestImage
from corral.lab.plan import LabNode, LabPlan
from corral.lab.probes import CounterClient
from corral.waiting import wait_for
from tests.integration.vm_helpers import console_lines, corral, corral_ok, guest_args

BANDWIDTH_MIB = 8  # slow enough that "during transfer" lasts seconds here


def runtime(node: LabNode, vm: str) -> dict[str, Any] | None:
    """What `node`'s agent says runs under `vm`'s name (None: the agent does not answer)."""
    try:
        with agents.client(node, timeout=5) as c:
            answer: dict[str, Any] = c.get(f"/runtime/{vm}")
            return answer
    except Exception:
        return None


@dataclass
class Scenario:
    lab: LabPlan
    vm: str
    host: int
    started: float = field(default_factory=time.monotonic)
    stream: CounterClient | None = None
    migration: subprocess.CompletedProcess[str] | None = None
    thread: threading.Thread | None = None

    @property
    def source(self) -> LabNode:
        return self.lab.nodes[0]

    @property
    def target(self) -> LabNode:
        return self.lab.nodes[1]

    def boot(self, image: GuestImage, fill_mib: int = 0) -> None:
        """Create and start the guest; `fill_mib` of its disk (from 1 MiB) written with
        data first, so a disk copy has that much to send."""
        ip = str(self.lab.guest_address(self.host).ip)
        corral_ok(
            self.source,
            "vm",
            "create",
            self.vm,
            "--nic",
            "br0",
            *guest_args(image, f"{ip}/24", dirty_mib=16, disk_mib=max(32, fill_mib + 8)),
        )
        if fill_mib:
            write = f"write -P 0x5a 1M {fill_mib}M"
            run(["qemu-io", "-f", "qcow2", "-c", write, str(self.disk_path(self.source))])
        corral_ok(self.source, "vm", "start", self.vm)
        wait_for(
            lambda: any(ln.startswith("DISKSEQ") for ln in console_lines(self.source, self.vm)),
            timeout=120,
            what=f"{self.vm} to write its disk",
        )
        self.stream = CounterClient.connect(self.lab, ip)
        wait_for(
            lambda: self.stream is not None and len(self.stream.counters) >= 3,
            timeout=30,
            what="the counter stream",
        )

    def migrate_in_background(self, *args: str) -> None:
        def run() -> None:
            self.migration = corral(
                self.source,
                "migrate",
                self.vm,
                self.target.name,
                "--bandwidth",
                str(BANDWIDTH_MIB),
                "--json",
                *args,
                timeout=600,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def disk_path(self, node: LabNode) -> Path:
        record = self._record(node)
        assert record is not None, f"{node.name} has no record of {self.vm}"
        return Path(record["spec"]["disks"][0]["path"])

    def images(self, node: LabNode) -> list[Path]:
        """The VM's disk images in `node`'s own data directory (a local-storage lab)."""
        return sorted((self.lab.storage_dir(node) / "data" / self.vm).glob("disk*"))

    def wait_phase(self, phase: str, done_at_least: int = 1) -> None:
        """Until the migration's progress shows `phase` with that many bytes done."""

        def reached() -> bool:
            task = self.send_task()
            return bool(
                task
                and task["progress"].get("phase") == phase
                and task["progress"].get("done", 0) >= done_at_least
            )

        wait_for(reached, timeout=90, what=f"the migration's {phase} phase", interval=0.05)

    def send_task(self) -> dict[str, Any] | None:
        with agents.client(self.source, timeout=5) as c:
            tasks = c.get("/tasks")
        sends = [
            t
            for t in tasks
            if t["kind"] == "migration.send" and t["args"]["options"]["vm"] == self.vm
        ]
        return sends[0] if sends else None

    def wait_transfer(self) -> None:
        """Until the migration is sending memory."""
        self.wait_phase("transfer")

    def wait_disk_copy(self) -> None:
        """Until the disk copy has sent 4 MiB (of more: BANDWIDTH_MIB makes it last)."""
        self.wait_phase("disks", 4 << 20)

    def wait_migration_command(self, timeout: float = 300) -> None:
        assert self.thread is not None
        self.thread.join(timeout)

    # -- the outcome -----------------------------------------------------------------------

    def where(self) -> list[str]:
        def answered() -> list[dict[str, Any]] | None:
            found = [runtime(n, self.vm) for n in self.lab.nodes]
            return None if any(f is None for f in found) else [f for f in found if f]

        found = wait_for(answered, timeout=60, what="both agents to answer")
        return [f["node"] for f in found if f["observed"] != "stopped"]

    def settle(self, timeout: float = 180) -> list[str]:
        """Wait until no node is in a transitional state, then say where the VM runs."""

        def settled() -> list[str] | None:
            found = [runtime(n, self.vm) for n in self.lab.nodes]
            if any(f is None for f in found):
                return None
            states = {f["node"]: f["observed"] for f in found if f}
            if any(s not in ("running", "stopped") for s in states.values()):
                return None
            if any(
                s == "running" and not f["recorded"] for f in found if f for s in [f["observed"]]
            ):
                return None  # running but not yet recorded: recovery still working
            return [n for n, s in states.items() if s == "running"]

        return wait_for(settled, timeout=timeout, what="the nodes to settle", interval=0.5)

    def check(self, *, lost_allowed: bool = False) -> dict[str, Any]:
        """The outcome every fault must leave; returns what it found."""
        running = self.settle()
        outcome: dict[str, Any] = {"runs_on": running}
        assert len(running) <= 1, f"{self.vm} runs on {running}"
        if not lost_allowed:
            assert len(running) == 1, f"{self.vm} runs nowhere"
        for node in self.lab.nodes:
            record = self._record(node)
            if node.name in running:
                assert record is not None, f"{node.name} runs {self.vm} without a record"
                assert record["owner"] == node.name, record
                assert record["observed"] == "running"
            elif record is not None:
                assert record["observed"] == "stopped", record
                assert record["state"] == "stopped", record
            sockets = list((node.local_dir / "run" / "vms" / self.vm).glob("*.sock"))
            if node.name not in running:
                assert sockets == [], sockets  # nothing left behind
        if running:
            host = self.lab.node(running[0])
            lines = console_lines(host, self.vm)
            assert sum("BOOTED" in ln for ln in lines) <= 1, "the guest rebooted"
            assert not [ln for ln in lines if ln.startswith("DISKERR")], "a write was lost"
            assert self.stream is not None
            seen = len(self.stream.counters)
            wait_for(
                lambda: self.stream is not None and len(self.stream.counters) > seen + 3,
                timeout=60,
                what="the guest to go on counting",
            )
            seqs = [c.seq for c in self.stream.counters]
            assert seqs == sorted(seqs), "the counter went back"
            outcome["tcp_survived"] = not self.stream.closed
        outcome["seconds"] = round(time.monotonic() - self.started, 1)
        return outcome

    def _record(self, node: LabNode) -> dict[str, Any] | None:
        out = corral(node, "vm", "show", self.vm, "--node", node.name, "--json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    def cleanup(self) -> None:
        if self.stream is not None:
            self.stream.close()
        for node in self.lab.nodes:
            if self._record(node) is not None:
                corral(node, "vm", "kill", self.vm)
                corral(node, "vm", "delete", self.vm)


def qemu_pid(s: Scenario, node_index: int) -> int:
    node = s.lab.nodes[node_index]
    found = wait_for(
        lambda: (r := runtime(node, s.vm)) is not None and r["pid"] and r,
        timeout=30,
        what=f"a QEMU for {s.vm} on {node.name}",
    )
    return int(found["pid"])


def kill_agent(s: Scenario, node_index: int) -> None:
    node = s.lab.nodes[node_index]
    pid = agents.agent_pid(node)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the agent to die")


def cut_migration_link(lab: LabPlan, seconds: float = 3) -> None:
    """node2's end of the migration network down for `seconds`, then up again."""
    link = ["ip", "-n", lab.fabric_netns, "link", "set", "m-node2"]
    run([*link, "down"])
    try:
        cut = time.monotonic()
        wait_for(lambda: time.monotonic() - cut > seconds, timeout=seconds + 10, what="the cut")
    finally:
        run([*link, "up"])


def report(fault: str, outcome: dict[str, Any]) -> None:
    """Append the outcome to CORRAL_FAULTS_REPORT (JSON lines) when set."""
    path = os.environ.get("CORRAL_FAULTS_REPORT")
    if path:
        with Path(path).open("a") as handle:
            handle.write(json.dumps({"fault": fault, **outcome}) + "\n")
