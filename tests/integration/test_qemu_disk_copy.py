"""The disk-copy primitives (hypervisors/qemu/disk_copy.py) on two real QEMUs: a running
guest's local disk mirrored over NBD with the cluster's TLS into the target's new, empty
image while the RAM migrates; the copy is identical, sparse where the source reads zero, and
the source's image is left as it was; a certificate of another name is refused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.pki import ClusterCA, PkiPaths
from corral.errors import HypervisorError
from corral.hypervisors.base import (
    MigrationState,
    MigrationStatus,
    MigrationTuning,
    RunState,
    VmLayout,
)
from corral.hypervisors.disk_copy_contract import DiskCopyStatus
from corral.hypervisors.qemu import disk_copy, migration
from corral.hypervisors.qemu.driver import QemuDriver
from corral.hypervisors.qemu.qmp_session import QmpSession
from corral.hypervisors.tls_files import tls_dir_for
from corral.lab.image import GuestImage, guest_cmdline
from corral.migration.receiver import free_port
from corral.model import VmSpec
from corral.waiting import wait_for

pytestmark = pytest.mark.qemu
DISK_MIB = 64


def pki_for(root: Path, names: tuple[str, ...]) -> dict[str, PkiPaths]:
    found = {name: PkiPaths(root / name) for name in names}
    ca = ClusterCA.create(found[names[0]], "disk-copy")
    for name in names:
        if name != names[0]:
            found[name].ca_cert.parent.mkdir(parents=True, exist_ok=True)
            found[name].ca_cert.write_bytes(found[names[0]].ca_cert.read_bytes())
        ca.issue_node(found[name], name, "127.0.0.1")
    return found


def spec_with(disk: Path, image: GuestImage) -> VmSpec:
    return VmSpec.model_validate(
        {
            "name": "copy",
            "memory_mib": 128,
            "disks": [{"path": str(disk), "format": "qcow2"}],
            "boot": {
                "kernel": str(image.kernel),
                "initrd": str(image.initrd),
                "cmdline": guest_cmdline(disk="vda"),  # the guest writes to its disk
            },
        }
    )


class Pair:
    def __init__(self, root: Path, image: GuestImage) -> None:
        self.root = root
        self.driver = QemuDriver("tcg")
        self.src_disk, self.dst_disk = root / "src.qcow2", root / "dst.qcow2"
        for disk in (self.src_disk, self.dst_disk):
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{DISK_MIB}M"], check=True
            )
        # A known pattern beyond the first sector, written before the guest starts.
        subprocess.run(
            ["qemu-io", "-c", "write -P 0x5a 4M 8M", str(self.src_disk)],
            check=True,
            capture_output=True,
        )
        self.src_spec = spec_with(self.src_disk, image)
        self.dst_spec = spec_with(self.dst_disk, image)
        self.src = VmLayout(root / "src", root / "src" / "checkpoints")
        self.dst = VmLayout(root / "dst", root / "dst" / "checkpoints")
        self.pki = pki_for(root / "pki", ("n1", "n2", "n3"))
        self.nbd_port, self.ram_port = free_port("127.0.0.1"), free_port("127.0.0.1")

    def tls(self, layout: VmLayout, endpoint: str, name: str) -> Path:
        p = self.pki[name]
        return tls_dir_for(layout, endpoint, p.ca_cert, p.node_cert, p.node_key)

    def serve(self) -> None:
        """The source runs; the target waits for it and serves its new image to n1."""
        self.driver.start(self.src_spec, self.src)
        self.driver.start_incoming(self.dst_spec, self.dst)
        disk_copy.export_disks(
            self.dst,
            [0],
            "127.0.0.1",
            self.nbd_port,
            tls_dir=self.tls(self.dst, "server", "n2"),
            peer_name="n1",
        )

    def stop(self) -> None:
        for layout in (self.src, self.dst):
            self.driver.kill(layout)


@pytest.fixture
def pair(tmp_path: Path, guest_image: GuestImage) -> Iterator[Pair]:
    subject = Pair(tmp_path, guest_image)
    try:
        yield subject
    finally:
        subject.stop()


def no_mirror_left(layout: VmLayout) -> bool:
    with QmpSession(layout.control_socket) as qmp:
        jobs = qmp.execute("query-jobs")
        nodes = [n["node-name"] for n in qmp.execute("query-named-block-nodes")]
    return not jobs and not [n for n in nodes if n.startswith("corral-nbd")]


def allocated(disk: Path) -> int:
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    return sum(e["length"] for e in json.loads(out) if e["data"])


def test_a_running_guests_disk_moves_with_it_identical_and_sparse(pair: Pair) -> None:
    pair.serve()
    migration.listen(pair.dst, "127.0.0.1", pair.ram_port, MigrationTuning())
    disk_copy.mirror_disks(
        pair.src,
        [0],
        "127.0.0.1",
        pair.nbd_port,
        tls_dir=pair.tls(pair.src, "client", "n1"),
        hostname="n2",
    )

    def mirrored() -> DiskCopyStatus | None:
        status = disk_copy.copy_status(pair.src, [0])
        return status if status.ready else None

    ready = wait_for(mirrored, timeout=120, what="the mirror to be ready")
    assert ready.jobs == 1
    assert ready.total == DISK_MIB * 1024 * 1024
    assert ready.done == ready.total
    migration.start(pair.src, "127.0.0.1", pair.ram_port, MigrationTuning())

    def finished() -> MigrationStatus | None:
        status = migration.status(pair.src)
        return status if status.state.finished else None

    done = wait_for(finished, timeout=120, what="the migration")
    assert done.state == MigrationState.COMPLETED, done.error
    disk_copy.end_mirrors(pair.src, [0], abandon=False)  # raises unless it ended clean
    assert no_mirror_left(pair.src)
    assert pair.driver.status(pair.dst).state == RunState.PAUSED  # -S: not before the stop
    disk_copy.stop_export(pair.dst)
    pair.driver.resume(pair.dst)
    assert pair.driver.status(pair.dst).state == RunState.RUNNING
    pair.stop()
    same = subprocess.run(
        ["qemu-img", "compare", str(pair.src_disk), str(pair.dst_disk)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stdout + same.stderr  # every byte, not sector 0
    # Only what reads as data was written: the 8 MiB pattern and the guest's own writes.
    assert allocated(pair.dst_disk) < DISK_MIB * 1024 * 1024 // 2


def test_a_client_certificate_of_another_name_gets_no_disk(pair: Pair) -> None:
    pair.serve()
    with pytest.raises(HypervisorError):
        disk_copy.mirror_disks(  # n3's certificate: signed by the same CA, not the source
            pair.src,
            [0],
            "127.0.0.1",
            pair.nbd_port,
            tls_dir=pair.tls(pair.src, "client", "n3"),
            hostname="n2",
        )
    assert no_mirror_left(pair.src)
    with pytest.raises(HypervisorError, match="disk 0"):
        disk_copy.copy_status(pair.src, [0])
    assert pair.driver.status(pair.src).state == RunState.RUNNING  # the source is untouched
