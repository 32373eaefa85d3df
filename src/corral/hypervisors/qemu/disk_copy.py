"""Copying a VM's local disks during a live migration (QEMU), each primitive on its named
side: the target serves its new, empty images over NBD (`export_disks`, `stop_export`); the
source mirrors its images into them while the VM runs (`mirror_disks`, `copy_status`) and
ends the mirrors once the migration completed, or abandons them (`end_mirrors`).

The sequence, checked on QEMU 7.2 (tests/integration/test_qemu_disk_copy.py):
1. target: the incoming QEMU runs with its new images and `-S`, so it stays paused after the
   stream until its NBD server has stopped; `nbd-server-start` (TLS with the cluster's
   certificates, `tls-authz`: only the source node's name) and a writable
   `block-export-add` per disk node (accepted on the incoming, still inactive, node);
2. source: an NBD client node per disk (`tls-hostname`: the target's name) and
   `blockdev-mirror` sync=full, copy-mode write-blocking (every guest write also reaches
   the target before it completes, so a busy guest cannot outrun the copy); blocks that
   read as zero are not written (the target's images stay sparse);
3. the RAM migration starts once every mirror is ready;
4. when it completed (the source paused): `block-job-cancel` of a ready mirror completes it
   without switching the source to the copy: the source's images stay as they were;
5. target: `nbd-server-stop`, then `cont`.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import HypervisorError
from corral.hypervisors.base import VmLayout
from corral.hypervisors.qemu.monitor_hub import HUB
from corral.hypervisors.qemu.qmp_session import QmpSession
from corral.waiting import wait_for

NBD_TLS = "corral-nbd-tls"
NBD_AUTHZ = "corral-nbd-authz"


def disk_node(index: int) -> str:
    """The format node of disk `index` (cmdline.py names them so)."""
    return f"disk{index}"


def _mirror_job(index: int) -> str:
    return f"corral-mirror{index}"


def _client_node(index: int) -> str:
    return f"corral-nbd{index}"


def _replace_object(qmp: QmpSession, qom_type: str, object_id: str, **props: Any) -> None:
    with contextlib.suppress(HypervisorError):
        qmp.execute("object-del", {"id": object_id})
    qmp.execute("object-add", {"qom-type": qom_type, "id": object_id, **props})


def _tls_object(qmp: QmpSession, tls_dir: Path, endpoint: str) -> str:
    """The NBD link's TLS credentials: the cluster CA, this node's certificate, and the
    peer's certificate required and checked."""
    _replace_object(
        qmp, "tls-creds-x509", NBD_TLS, dir=str(tls_dir), endpoint=endpoint, **{"verify-peer": True}
    )
    return NBD_TLS


def _inet(address: str, port: int) -> dict[str, Any]:
    return {"type": "inet", "host": address, "port": str(port)}


def export_disks(
    layout: VmLayout,
    disks: list[int],
    address: str,
    port: int,
    *,
    tls_dir: Path | None,
    peer_name: str | None,
) -> None:
    """Target: serve disks `disks` of the incoming VM, writable, over NBD on address:port;
    with `tls_dir`, TLS with the cluster's certificates and only `peer_name` (the source
    node's certificate name) let in."""
    with QmpSession(layout.control_socket) as qmp:
        # nbd-server-start takes the legacy form: {type, data: {host, port}}.
        legacy = {"type": "inet", "data": {"host": address, "port": str(port)}}
        server: dict[str, Any] = {"addr": legacy}
        if tls_dir is not None:
            server["tls-creds"] = _tls_object(qmp, tls_dir, "server")
            if peer_name:
                _replace_object(qmp, "authz-simple", NBD_AUTHZ, identity=f"CN={peer_name}")
                server["tls-authz"] = NBD_AUTHZ
        qmp.execute("nbd-server-start", server)
        for index in disks:
            qmp.execute(
                "block-export-add",
                {
                    "type": "nbd",
                    "id": f"corral-export{index}",
                    "node-name": disk_node(index),
                    "name": disk_node(index),
                    "writable": True,
                },
            )


def stop_export(layout: VmLayout) -> None:
    """Target: stop serving the disks (before the VM runs there; stopping twice is fine)."""
    with QmpSession(layout.control_socket) as qmp, contextlib.suppress(HypervisorError):
        qmp.execute("nbd-server-stop")


def mirror_disks(
    layout: VmLayout,
    disks: list[int],
    address: str,
    port: int,
    *,
    tls_dir: Path | None,
    hostname: str | None,
) -> None:
    """Source: start mirroring disks `disks` to the target's NBD exports at address:port
    (`hostname`: the name the target's certificate must carry)."""
    with QmpSession(layout.control_socket) as qmp:
        if tls_dir is not None:
            _tls_object(qmp, tls_dir, "client")
        for index in disks:
            client: dict[str, Any] = {
                "driver": "nbd",
                "node-name": _client_node(index),
                "server": _inet(address, port),
                "export": disk_node(index),
            }
            if tls_dir is not None:
                client["tls-creds"] = NBD_TLS
                if hostname:
                    client["tls-hostname"] = hostname
            qmp.execute("blockdev-add", client)
            qmp.execute(
                "blockdev-mirror",
                {
                    "job-id": _mirror_job(index),
                    "device": disk_node(index),
                    "target": _client_node(index),
                    "sync": "full",
                    "copy-mode": "write-blocking",
                },
            )


@dataclass(frozen=True)
class DiskCopyStatus:
    """The mirrors of one VM: bytes copied of the total, and whether every one is ready
    (in step with the source: the RAM migration may start)."""

    done: int
    total: int
    ready: bool
    jobs: int


def copy_status(layout: VmLayout) -> DiskCopyStatus:
    """Source: the mirrors as QEMU sees them now.

    :raise HypervisorError: a mirror stopped with an error.
    """
    jobs = [
        j
        for j in HUB.query(layout.status_socket, "query-block-jobs")
        if str(j.get("device", "")).startswith("corral-mirror")
    ]
    for job in jobs:
        if job.get("status") == "concluded" and job.get("error"):
            raise HypervisorError(f"disk copy {job['device']} failed: {job['error']}")
    return DiskCopyStatus(
        done=sum(int(j.get("offset", 0)) for j in jobs),
        total=sum(int(j.get("len", 0)) for j in jobs),
        ready=bool(jobs) and all(j.get("ready") for j in jobs),
        jobs=len(jobs),
    )


def end_mirrors(layout: VmLayout, disks: list[int], *, abandon: bool, timeout: float = 60) -> None:
    """Source: end the mirrors and drop the NBD clients. After the migration completed
    (`abandon` false) a ready mirror finishes its last writes and completes without
    switching over; before it (`abandon`), the copy is dropped at once. Either way the
    source's images stay as the guest wrote them."""
    with QmpSession(layout.control_socket) as qmp:
        for index in disks:
            with contextlib.suppress(HypervisorError):  # not started, or already gone
                qmp.execute("block-job-cancel", {"device": _mirror_job(index), "force": abandon})

        def gone() -> bool:
            running = {str(j.get("device")) for j in qmp.execute("query-block-jobs")}
            return not running & {_mirror_job(i) for i in disks}

        wait_for(gone, timeout=timeout, what="the disk mirrors to end", interval=0.02)
        for index in disks:
            with contextlib.suppress(HypervisorError):
                qmp.execute("blockdev-del", {"node-name": _client_node(index)})
