"""bhyve migration at the driver level, on two simulated hosts over real sockets: bhyve's
plain stream carried by corral's TLS tunnel with the cluster CA; a VM that left is never
restarted (bhyve exits 0 then, as on a reboot); failures leave it running on the source."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.cluster.pki import ClusterCA, PkiPaths
from corral.hypervisors.base import MigrationStatus, MigrationTuning, RunState, VmLayout
from corral.hypervisors.bhyve.driver import BhyveDriver
from corral.hypervisors.bhyve.host import BhyveHost
from corral.hypervisors.bhyve.runtime import Runtime
from corral.lab.guest import parse_counter
from corral.model import VmSpec
from corral.waiting import wait_for
from tests.bhyve_sim.host import SimHost, install

MIB = 1 << 20


@dataclass
class Side:
    host: SimHost
    driver: BhyveDriver
    layout: VmLayout
    pki: PkiPaths

    def counters(self) -> list[int]:
        try:
            text = self.layout.console_log.read_text()
        except FileNotFoundError:
            return []
        return [c.seq for c in map(parse_counter, text.splitlines()) if c is not None]

    def boots(self) -> int:
        try:
            return self.layout.console_log.read_text().count("BOOTED")
        except FileNotFoundError:
            return 0

    def counting_past(self, seq: int) -> int:
        def past() -> int | None:
            found = self.counters()
            return found[-1] if found and found[-1] > seq else None

        return wait_for(past, timeout=30, what=f"the guest to count past {seq}")

    def tls(self, endpoint: str) -> Path:
        p = self.pki
        return self.driver.migration_tls_dir(
            self.layout, endpoint, p.ca_cert, p.node_cert, p.node_key
        )


@dataclass
class Pair:
    spec: VmSpec
    src: Side
    dst: Side

    def listen(self, *, tls: bool = True, source: str | None = None) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        tuning = MigrationTuning(
            tls_dir=self.dst.tls("server") if tls else None, tls_peer_name=source
        )
        self.dst.driver.migration_listen(self.spec, self.dst.layout, "127.0.0.1", port, tuning)
        return port

    def send(
        self, port: int, *, tls: bool = True, bandwidth: int = 0, target: str = "127.0.0.1"
    ) -> None:
        tuning = MigrationTuning(
            tls_dir=self.src.tls("client") if tls else None,
            tls_hostname=target,
            bandwidth_bytes=bandwidth,
        )
        self.src.driver.migration_start(self.src.layout, "127.0.0.1", port, tuning)

    def outcome(self) -> MigrationStatus:
        def finished() -> MigrationStatus | None:
            status = self.src.driver.migration_status(self.src.layout)
            return status if status.finished else None

        return wait_for(finished, timeout=60, what="the migration to finish")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    ca_paths = PkiPaths(tmp_path / "pki-src")
    ca = ClusterCA.create(ca_paths, "sim")
    ca.issue_node(ca_paths, "src", "127.0.0.1")
    dst_paths = PkiPaths(tmp_path / "pki-dst")
    ca.issue_node(dst_paths, "dst", "127.0.0.1")
    sides = []
    for name, pki in (("src", ca_paths), ("dst", dst_paths)):
        host = install(tmp_path / f"host-{name}")
        layout = VmLayout(tmp_path / f"run-{name}", tmp_path / "checkpoints")
        sides.append(Side(host, BhyveDriver(BhyveHost(host.root)), layout, pki))
    spec = VmSpec.model_validate(
        {
            "name": "mover",
            "memory_mib": 32,
            "disks": [{"path": str(tmp_path / "shared.img"), "format": "raw", "size_mib": 8}],
        }
    )
    sides[0].driver.define(spec)
    sides[0].driver.start(spec, sides[0].layout)
    sides[0].counting_past(2)
    yield Pair(spec, sides[0], sides[1])
    for side in sides:
        side.driver.kill(side.layout)


def test_a_migration_over_the_tls_tunnel_moves_the_running_guest(pair: Pair) -> None:
    port = pair.listen()
    assert pair.dst.driver.status(pair.dst.layout).state == RunState.INCOMING
    pair.send(port)
    result = pair.outcome()
    assert result.state == "completed", result.error
    assert result.ram_transferred == 32 * MIB
    wait_for(
        lambda: pair.dst.driver.migration_incoming_done(pair.dst.layout),
        timeout=30,
        what="the VM to run on the destination",
    )
    last_on_source = pair.src.counters()[-1]
    first_here = pair.dst.counting_past(0)
    assert first_here >= last_on_source  # it went on counting: memory came across
    assert pair.dst.boots() == 0
    assert pair.dst.driver.status(pair.dst.layout).state == RunState.RUNNING
    # The source's bhyve exited 0, like a reboot: it is not started again.
    src = Runtime(pair.src.layout)
    wait_for(lambda: src.supervisor_pid() is None, timeout=30, what="the source to settle")
    status = pair.src.driver.status(pair.src.layout)
    assert status.state == RunState.STOPPED
    assert status.detail == "migrated away"
    assert pair.src.boots() == 1
    assert not (pair.src.host.vmm_dir / "mover").exists()
    tunnel = (pair.dst.layout.runtime_dir / "receive.json").read_text()
    assert '"peer": "127.0.0.1"' in tunnel


def test_plain_tcp_when_asked(pair: Pair) -> None:
    pair.send(pair.listen(tls=False), tls=False)
    assert pair.outcome().state == "completed"


def test_a_tunnel_from_outside_the_cluster_is_refused(pair: Pair, tmp_path: Path) -> None:
    stranger = PkiPaths(tmp_path / "stranger")
    ClusterCA.create(stranger, "other").issue_node(stranger, "src", "127.0.0.1")
    pair.src.pki = stranger
    pair.send(pair.listen())
    result = pair.outcome()
    assert result.state == "failed"
    pair.src.driver.migration_resume_source(pair.src.layout)
    assert pair.src.driver.status(pair.src.layout).state == RunState.RUNNING
    pair.src.counting_past(pair.src.counters()[-1])
    assert pair.dst.counters() == []


def test_only_the_named_nodes_meet_through_the_tunnel(pair: Pair) -> None:
    """Both ends check names, not only the CA: a target waiting for another source refuses
    this one, and a source sent to "elsewhere" refuses a target whose certificate says dst."""
    for listen, send in (({"source": "other"}, {}), ({}, {"target": "elsewhere"})):
        pair.send(pair.listen(**listen), **send)  # type: ignore[arg-type]
        assert pair.outcome().state == "failed"
        pair.src.driver.migration_resume_source(pair.src.layout)
        assert pair.src.driver.status(pair.src.layout).state == RunState.RUNNING
        pair.dst.driver.kill(pair.dst.layout)
    pair.src.counting_past(pair.src.counters()[-1])
    assert pair.dst.counters() == []
    # The right names: it moves.
    pair.send(pair.listen(source="src"), target="dst")
    assert pair.outcome().state == "completed"


def test_a_destination_with_another_cpu_refuses_and_the_guest_runs_on(pair: Pair) -> None:
    pair.dst.host.configure(sysctl={"hw.model": "AMD EPYC 7302 16-Core Processor"})
    pair.send(pair.listen())
    result = pair.outcome()
    assert result.state == "failed"
    assert "specs differ: model" in result.error
    pair.src.driver.migration_resume_source(pair.src.layout)
    pair.src.counting_past(pair.src.counters()[-1])
    assert pair.src.boots() == 1


def test_cancel_during_the_transfer_leaves_the_guest_running_here(pair: Pair) -> None:
    pair.send(pair.listen(), bandwidth=2 * MIB)
    wait_for(
        lambda: pair.src.driver.migration_status(pair.src.layout).ram_transferred > 2 * MIB,
        timeout=30,
        what="the transfer to be under way",
    )
    pair.src.driver.migration_cancel(pair.src.layout)
    assert pair.src.driver.migration_status(pair.src.layout).state == "cancelled"
    pair.src.driver.migration_resume_source(pair.src.layout)
    pair.src.counting_past(pair.src.counters()[-1])
    assert pair.src.driver.status(pair.src.layout).state == RunState.RUNNING
    assert pair.src.boots() == 1
    with pytest.raises(Exception, match="exited"):
        wait_for(
            lambda: pair.dst.driver.migration_incoming_done(pair.dst.layout),
            timeout=30,
            what="the destination to give up",
        )


def test_a_guest_reboot_is_restarted(pair: Pair) -> None:
    """The other side of the exit-0 rule: without a departure, exit 0 is a reboot."""
    reset = [pair.src.driver.host.bhyvectl, "--vm=mover", "--force-reset"]
    subprocess.run(reset, check=True, capture_output=True)
    wait_for(lambda: pair.src.boots() == 2, timeout=30, what="the guest to boot again")
    wait_for(
        lambda: pair.src.driver.status(pair.src.layout).state == RunState.RUNNING,
        timeout=30,
        what="the VM to run again",
    )
