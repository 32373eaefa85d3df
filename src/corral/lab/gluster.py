"""A GlusterFS volume under the lab's shared directory: a real distributed filesystem, as the
seed names for VM storage (with NFS and Ceph, which these machines cannot run).

glusterd runs in the lab's storage namespace on the migration network (it refuses loopback
bricks), with its working directory under the lab's root; the volume has one brick there;
the FUSE client mounts it on the shared directory from the storage namespace, keeping the
host's mount namespace, so every node sees the same mount at the same path (docs/lab.md).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from corral import commands
from corral.lab import netns
from corral.lab.plan import LabPlan
from corral.storage.filesystem import mount_of
from corral.waiting import wait_for

GLUSTERD_VOLFILE = Path("/etc/glusterfs/glusterd.vol")


def _dirs(plan: LabPlan) -> tuple[Path, Path, Path]:
    base = plan.config.root / "gluster"
    return base / "glusterd", base / "brick", base / "log"


def _gluster(plan: LabPlan, *args: str) -> str:
    argv = netns.in_netns(plan.storage_netns, ["gluster", "--mode=script", *args])
    return commands.run(argv, timeout=60).stdout


def mounted(plan: LabPlan) -> bool:
    return mount_of(plan.shared_dir).fstype == "fuse.glusterfs"


def start(plan: LabPlan) -> None:
    """Start glusterd, create and start the volume, mount it on the shared directory."""
    workdir, brick, logs = _dirs(plan)
    for folder in (workdir, brick, logs):
        folder.mkdir(parents=True, exist_ok=True)
    volfile = workdir.parent / "glusterd.vol"
    volfile.write_text(GLUSTERD_VOLFILE.read_text().replace("/var/lib/glusterd", str(workdir)))
    assert plan.storage_address is not None
    address = str(plan.storage_address.ip)
    commands.run(
        netns.in_netns(
            plan.storage_netns,
            [
                "glusterd",
                "-f",
                str(volfile),
                "-p",
                str(workdir.parent / "glusterd.pid"),
                "-l",
                str(logs / "glusterd.log"),
            ],
        )
    )
    volume = plan.config.prefix
    wait_for(
        lambda: commands.succeeds(
            netns.in_netns(plan.storage_netns, ["gluster", "--mode=script", "volume", "list"])
        ),
        timeout=30,
        what="glusterd to answer",
    )
    _gluster(plan, "volume", "create", volume, f"{address}:{brick}", "force")
    _gluster(plan, "volume", "start", volume)
    plan.shared_dir.mkdir(parents=True, exist_ok=True)
    commands.run(
        [
            "nsenter",
            f"--net=/run/netns/{plan.storage_netns}",
            "mount",
            "-t",
            "glusterfs",
            f"{address}:/{volume}",
            str(plan.shared_dir),
        ],
        timeout=60,
    )
    wait_for(lambda: mounted(plan), timeout=30, what="the GlusterFS mount")


def stop(plan: LabPlan) -> None:
    """Unmount, stop and delete the volume, stop glusterd and its bricks."""
    if mounted(plan):
        commands.run(["umount", "-l", str(plan.shared_dir)], check=False)
    if plan.storage_netns in netns.existing_namespaces():
        with contextlib.suppress(Exception):
            _gluster(plan, "volume", "stop", plan.config.prefix, "force")
            _gluster(plan, "volume", "delete", plan.config.prefix)
        netns.kill_pids(netns.pids_in(plan.storage_netns))
    pid_file = _dirs(plan)[0].parent / "glusterd.pid"
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text()), 9)
