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
from pathlib import Path
from typing import Any

from corral.errors import HypervisorError
from corral.hypervisors.base import VmLayout
from corral.hypervisors.disk_copy_contract import DiskCopyStatus
from corral.hypervisors.qemu.monitor_hub import HUB
from corral.hypervisors.qemu.qmp_session import QmpSession
from corral.waiting import wait_for

NBD_TLS = "corral-nbd-tls"
NBD_AUTHZ = "corral-nbd-authz"
MIRROR_BUFFER = 64 * 1024 * 1024  # bytes a mirror keeps in flight (QEMU's default: 16 MiB)
MIN_BUFFER = 1024 * 1024


def mirror_buffer(speed: int) -> int:
    """The mirror's buffer: large for throughput, but with a cap (`speed` bytes/s) a quarter
    second of it at most, so the cap holds over the copy (QEMU sends a whole buffer, then
    waits it off) rather than in one burst and a long pause."""
    if not speed:
        return MIRROR_BUFFER
    quarter = speed // 4 // MIN_BUFFER * MIN_BUFFER
    return max(MIN_BUFFER, min(MIRROR_BUFFER, quarter))


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
    speed: int = 0,
) -> None:
    """Source: start mirroring disks `disks` to the target's NBD exports at address:port
    (`hostname`: the name the target's certificate must carry; `speed`: bytes/s each
    mirror may copy, 0 for no limit)."""
    end_mirrors(layout, disks, abandon=True)  # what an interrupted migration left behind
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
                    # Kept once ended, so a failure is seen (and dismissed by end_mirrors).
                    "auto-dismiss": False,
                    "speed": speed,
                    "buf-size": mirror_buffer(speed),
                },
            )


def copy_status(layout: VmLayout, disks: list[int]) -> DiskCopyStatus:
    """Source: the mirrors of disks `disks` as QEMU sees them now.

    :raise HypervisorError: a mirror stopped with an error, or is gone.
    """
    jobs = {
        str(j.get("device")): j
        for j in HUB.query(layout.status_socket, "query-block-jobs")
        if str(j.get("device", "")).startswith("corral-mirror")
    }
    for index in disks:
        job = jobs.get(_mirror_job(index))
        if job is None:
            raise HypervisorError(f"the copy of disk {index} stopped (its mirror job is gone)")
        if job.get("status") == "concluded" or job.get("error"):
            raise HypervisorError(
                f"the copy of disk {index} failed: {job.get('error') or job.get('status')}"
            )
    mine = [jobs[_mirror_job(i)] for i in disks]
    return DiskCopyStatus(
        done=sum(int(j.get("offset", 0)) for j in mine),
        total=sum(int(j.get("len", 0)) for j in mine),
        ready=all(j.get("ready") for j in mine),
        jobs=len(mine),
    )


def _concluded(qmp: QmpSession, disks: list[int]) -> dict[str, dict[str, Any]] | None:
    """The mirrors' jobs once none of them runs any more (None while one does)."""
    jobs = {str(j.get("id")): j for j in qmp.execute("query-jobs")}
    mine = {name: jobs[name] for name in map(_mirror_job, disks) if name in jobs}
    if any(j.get("status") not in ("concluded", "null") for j in mine.values()):
        return None
    return mine


def end_mirrors(layout: VmLayout, disks: list[int], *, abandon: bool, timeout: float = 60) -> None:
    """Source: end the mirrors and drop the NBD clients. After the migration completed
    (`abandon` false) a ready mirror finishes its last writes and completes without
    switching over; before it (`abandon`), the copy is dropped at once. Either way the
    source's images stay as the guest wrote them.

    :raise HypervisorError: (not abandoning) a mirror ended with an error or had already
        stopped: the target's copy may miss writes.
    """
    failed = []
    with QmpSession(layout.control_socket) as qmp:
        running = {str(j.get("id")) for j in qmp.execute("query-jobs")}
        for index in disks:
            if _mirror_job(index) not in running:
                failed.append(f"disk {index}: its mirror had stopped")
                continue
            with contextlib.suppress(HypervisorError):  # concluded meanwhile
                qmp.execute("block-job-cancel", {"device": _mirror_job(index), "force": abandon})
        ended = wait_for(
            lambda: _concluded(qmp, disks),
            timeout=timeout,
            what="the disk mirrors to end",
            interval=0.01,
        )
        for name, job in ended.items():
            if job.get("error"):
                failed.append(f"{name}: {job['error']}")
            with contextlib.suppress(HypervisorError):
                qmp.execute("job-dismiss", {"id": name})
        for index in disks:
            with contextlib.suppress(HypervisorError):
                qmp.execute("blockdev-del", {"node-name": _client_node(index)})
    if failed and not abandon:
        raise HypervisorError("the disk copy is not whole: " + "; ".join(failed))
