"""Migrations check node names, not only that the CA signed a certificate: a source told to
migrate to node2 refuses an address that presents node3's certificate, a target waiting for
node2 refuses a stream from node1, and the VM runs on at the source. Over one channel the
agents' TLS relay checks them (tls_relay.py); over multifd channels QEMU's own TLS does
(`tls-hostname`, `tls-authz`; the multifd path is exercised by test_migration.py). Real
QEMU on loopback, certificates from a real cluster CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.pki import ClusterCA, PkiPaths, make_key_and_csr
from corral.hypervisors.base import MigrationStatus, MigrationTuning, RunState, VmLayout
from corral.hypervisors.qemu.driver import QemuDriver
from corral.migration.receiver import free_port
from corral.model import VmSpec
from corral.waiting import wait_for

pytestmark = pytest.mark.qemu
LOOPBACK = "127.0.0.1"


def node_pki(ca: ClusterCA, root: Path, name: str) -> PkiPaths:
    paths = PkiPaths(root / name)
    key, csr = make_key_and_csr(name)
    paths.save_node(ca.cert_pem, ca.sign(csr, name, LOOPBACK), key)
    return paths


def finished(driver: QemuDriver, layout: VmLayout) -> MigrationStatus:
    def ended() -> MigrationStatus | None:
        status = driver.migration_status(layout)
        return status if status.finished else None

    return wait_for(ended, timeout=60, what="the migration to end")


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[QemuDriver, VmSpec, VmLayout, ClusterCA, Path]]:
    driver = QemuDriver("tcg")
    spec = VmSpec(name="named", memory_mib=64)
    layout = VmLayout(tmp_path / "src", tmp_path / "src-checkpoints")
    ca_paths = PkiPaths(tmp_path / "ca")
    ca = ClusterCA.create(ca_paths, "names")
    driver.define(spec)
    driver.start(spec, layout)
    try:
        yield driver, spec, layout, ca, tmp_path
    finally:
        driver.kill(layout)


def test_a_target_presenting_another_nodes_certificate_is_refused(
    source: tuple[QemuDriver, VmSpec, VmLayout, ClusterCA, Path],
) -> None:
    # One channel: the agents' relay. (With multifd channels QEMU 7.2's own TLS checks the
    # names, but after a refused multifd stream that QEMU may refuse every later `migrate`
    # with "duplicate yank instance": it keeps the failed migration's yank instance, so
    # the three moves of one source below cannot be run over multifd.)
    channels = 1
    driver, spec, layout, ca, root = source
    node1, node3 = node_pki(ca, root, "node1"), node_pki(ca, root, "node3")
    client_tls = driver.migration_tls_dir(
        layout, "client", node1.ca_cert, node1.node_cert, node1.node_key
    )

    def target(name: str, source: str = "node1") -> tuple[VmLayout, int]:
        there = VmLayout(root / f"dst-{name}", root / f"dst-{name}-checkpoints")
        tls = driver.migration_tls_dir(
            there, "server", node3.ca_cert, node3.node_cert, node3.node_key
        )
        port = free_port(LOOPBACK)
        tuning = MigrationTuning(tls_dir=tls, tls_peer_name=source, multifd_channels=channels)
        driver.migration_listen(spec, there, LOOPBACK, port, tuning)
        return there, port

    # "Migrate to node2": the address answers with node3's certificate.
    impostor, port = target("impostor")
    try:
        tuning = MigrationTuning(
            tls_dir=client_tls, tls_hostname="node2", multifd_channels=channels
        )
        driver.migration_start(layout, LOOPBACK, port, tuning)
        status = finished(driver, layout)
        assert status.state == "failed", status
        assert "node2" in status.error, status.error
        assert driver.status(layout).state == RunState.RUNNING
        assert driver.status(impostor).state != RunState.RUNNING
    finally:
        driver.kill(impostor)

    # node3 waits for node2's VM: node1's stream is refused though the CA signed node1.
    waiting, port = target("waiting", source="node2")
    try:
        tuning = MigrationTuning(
            tls_dir=client_tls, tls_hostname="node3", multifd_channels=channels
        )
        driver.migration_start(layout, LOOPBACK, port, tuning)
        assert finished(driver, layout).state == "failed"
        assert driver.status(layout).state == RunState.RUNNING
        assert driver.status(waiting).state != RunState.RUNNING
    finally:
        driver.kill(waiting)

    # The same certificate, asked for by its own name: the migration goes through (so the
    # refusal above was the name, not the set-up).
    real, port = target("real")
    try:
        driver.migration_start(
            layout,
            LOOPBACK,
            port,
            MigrationTuning(tls_dir=client_tls, tls_hostname="node3", multifd_channels=channels),
        )
        assert finished(driver, layout).state == "completed"
        wait_for(lambda: driver.migration_incoming_done(real), timeout=30, what="arrival")
    finally:
        driver.kill(real)
