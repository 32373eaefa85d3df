"""QEMU checkpoints (CBSD's bcheckpoint): the VM's memory and device state saved through a
migration to a file (`exec:cat > FILE`, as QEMU 7.2 has no `file:` URI), and every disk
snapshotted internally in its qcow2 while the VM is paused, so state and disks match.

Layout of `CHECKPOINT_DIR/NAME/`: `state.bin` (the migration stream) and `meta.json`
(`CheckpointInfo`: spec digest, QEMU version, time, size). Disk snapshots are named
`corral-NAME` inside each qcow2.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import time
from pathlib import Path

from corral import commands
from corral.errors import ConflictError, HypervisorError, NotFoundError, UserInputError
from corral.hypervisors.base import CheckpointInfo, VmLayout
from corral.hypervisors.qemu.migration import plain_stream
from corral.hypervisors.qemu.qmp_session import QmpSession
from corral.model import VmSpec, spec_digest
from corral.waiting import wait_for

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
SAVE_BANDWIDTH = 8 * 1024**3  # bytes/s: a local file, so no reason to throttle


def snapshot_name(checkpoint: str) -> str:
    return f"corral-{checkpoint}"


def checkpoint_dir(layout: VmLayout, name: str) -> Path:
    return layout.checkpoint_dir / name


def read_info(layout: VmLayout, name: str) -> CheckpointInfo:
    """:raise NotFoundError: no such checkpoint."""
    meta = checkpoint_dir(layout, name) / "meta.json"
    if not meta.exists():
        raise NotFoundError(f"no checkpoint {name!r}")
    return CheckpointInfo.from_json(json.loads(meta.read_text()))


def list_infos(layout: VmLayout) -> list[CheckpointInfo]:
    if not layout.checkpoint_dir.exists():
        return []
    infos = []
    for meta in sorted(layout.checkpoint_dir.glob("*/meta.json")):
        infos.append(CheckpointInfo.from_json(json.loads(meta.read_text())))
    return sorted(infos, key=lambda i: i.created_at)


def _wait_migration(session: QmpSession, what: str, timeout: float) -> None:
    def finished() -> bool:
        info = session.execute("query-migrate")
        status = info.get("status")
        if status == "failed":
            raise HypervisorError(f"{what} failed: {info.get('error-desc', 'no reason given')}")
        if status == "cancelled":
            raise HypervisorError(f"{what} was cancelled")
        if status != "completed":
            return False
        # QEMU says completed before its migration thread leaves finish-migrate, and refuses
        # `cont` until then ("Migration is not finalized yet").
        return bool(session.execute("query-status")["status"] != "finish-migrate")

    wait_for(finished, timeout=timeout, what=what, interval=0.05)


def save(
    session: QmpSession,
    spec: VmSpec,
    layout: VmLayout,
    name: str,
    *,
    qemu_version: str,
    suspend: bool,
    timeout: float = 600.0,
) -> CheckpointInfo:
    """Pause, snapshot every disk, stream the state to a file, then continue (or quit)."""
    for i, disk in enumerate(spec.disks):
        if disk.format != "qcow2":
            raise UserInputError(
                f"disks[{i}].format", "checkpoints need qcow2 disks (raw has no snapshots)"
            )
    folder = checkpoint_dir(layout, name)
    if folder.exists():
        raise ConflictError(f"checkpoint {name!r} of {spec.name} already exists")
    folder.mkdir(parents=True)
    state = folder / "state.bin"
    was_running = session.execute("query-status")["status"] == "running"
    session.execute("stop")
    snapshots: list[str] = []
    try:
        for i in range(len(spec.disks)):
            session.execute(
                "blockdev-snapshot-internal-sync",
                {"device": f"disk{i}", "name": snapshot_name(name)},
            )
            snapshots.append(f"disk{i}")
        # A VM that migrated in with TLS keeps its credentials set: not for a file.
        plain_stream(session, SAVE_BANDWIDTH)
        session.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
        _wait_migration(session, "saving the VM state", timeout)
        info = CheckpointInfo(
            name=name,
            vm=spec.name,
            spec_digest=spec_digest(spec),
            hypervisor="qemu",
            hypervisor_version=qemu_version,
            created_at=time.time(),
            size_bytes=state.stat().st_size,
            suspended=suspend,
            disk_snapshots=tuple(str(d.path) for d in spec.disks),
        )
        (folder / "meta.json").write_text(json.dumps(info.to_json(), indent=2) + "\n")
    except BaseException:
        for device in snapshots:
            session.execute(
                "blockdev-snapshot-delete-internal-sync",
                {"device": device, "name": snapshot_name(name)},
            )
        shutil.rmtree(folder, ignore_errors=True)
        if was_running:
            session.execute("cont")
        raise
    if suspend:
        session.quit()
    elif was_running:
        session.execute("cont")
    return info


def check_restorable(info: CheckpointInfo, spec: VmSpec, qemu_version: str) -> None:
    """:raise ConflictError: the checkpoint belongs to another spec or QEMU series."""
    if info.spec_digest != spec_digest(spec):
        raise ConflictError(
            f"checkpoint {info.name!r} was made for another spec of {spec.name}"
            f" (spec {info.spec_digest}, now {spec_digest(spec)}); restore refused"
        )
    if info.hypervisor != "qemu":
        raise ConflictError(f"checkpoint {info.name!r} was made by {info.hypervisor}")
    made, here = info.hypervisor_version.split(".")[:2], qemu_version.split(".")[:2]
    if made != here:
        raise ConflictError(
            f"checkpoint {info.name!r} was made by QEMU {info.hypervisor_version}; this node"
            f" runs {qemu_version}, whose state format may differ; restore refused"
        )


def revert_disks(spec: VmSpec, name: str) -> None:
    """Return every disk to the checkpoint's snapshot (the VM must be stopped)."""
    for disk in spec.disks:
        commands.run(["qemu-img", "snapshot", "-a", snapshot_name(name), str(disk.path)])


def load_state(session: QmpSession, layout: VmLayout, name: str, timeout: float = 600.0) -> None:
    """Feed the saved state to a QEMU started with `-incoming defer`, then run it."""
    state = checkpoint_dir(layout, name) / "state.bin"
    session.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"})

    def loaded() -> bool:
        status = session.execute("query-status")["status"]
        if status in ("internal-error", "shutdown"):
            raise HypervisorError(f"QEMU could not load checkpoint {name!r}: {status}")
        return bool(status != "inmigrate")

    wait_for(loaded, timeout=timeout, what=f"checkpoint {name!r} to load", interval=0.05)
    session.execute("cont")


def delete(spec: VmSpec, layout: VmLayout, name: str, session: QmpSession | None) -> None:
    """Remove the checkpoint's files and its disk snapshots (live through QMP if running)."""
    read_info(layout, name)
    for i, disk in enumerate(spec.disks):
        if session is not None:
            with contextlib.suppress(HypervisorError):  # already gone from this disk
                session.execute(
                    "blockdev-snapshot-delete-internal-sync",
                    {"device": f"disk{i}", "name": snapshot_name(name)},
                )
        else:
            commands.run(
                ["qemu-img", "snapshot", "-d", snapshot_name(name), str(disk.path)], check=False
            )
    shutil.rmtree(checkpoint_dir(layout, name), ignore_errors=True)
