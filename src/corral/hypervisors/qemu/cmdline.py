"""The qemu-system command line for a VM spec. Pure: builds a list of strings.

The same spec must give the same guest-visible machine on every node, since a migration's
destination is started from it: machine type pinned, CPU model named, devices in a fixed
order with fixed ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corral.model import VmSpec

QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class RuntimePaths:
    """Where one running VM keeps its sockets, logs and pid file."""

    qmp_socket: Path
    console_log: Path
    pid_file: Path

    @classmethod
    def in_dir(cls, folder: Path) -> RuntimePaths:
        return cls(folder / "qmp.sock", folder / "console.log", folder / "qemu.pid")


def qemu_argv(
    spec: VmSpec,
    paths: RuntimePaths,
    *,
    accel: str = "tcg",
    incoming: str | None = None,
    binary: str = QEMU_BINARY,
) -> list[str]:
    """The full argv that runs `spec`; `incoming` ("defer") starts a migration target."""
    topo = spec.cpu.effective_topology
    argv = [
        binary,
        "-name",
        f"{spec.name},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-display",
        "none",
        "-accel",
        accel,
        "-machine",
        spec.machine,
        "-cpu",
        spec.cpu.model,
        "-smp",
        f"{spec.cpu.count},sockets={topo.sockets},cores={topo.cores},threads={topo.threads}",
        "-m",
        f"{spec.memory_mib}M",
        "-qmp",
        f"unix:{paths.qmp_socket},server=on,wait=off",
        "-pidfile",
        str(paths.pid_file),
        "-chardev",
        f"file,id=console0,path={paths.console_log}",
        "-serial",
        "chardev:console0",
    ]
    if spec.boot is not None:
        argv += ["-kernel", str(spec.boot.kernel)]
        if spec.boot.initrd is not None:
            argv += ["-initrd", str(spec.boot.initrd)]
        if spec.boot.cmdline:
            argv += ["-append", spec.boot.cmdline]
    for i, disk in enumerate(spec.disks):
        direct = "on" if disk.cache_direct else "off"
        argv += [
            "-blockdev",
            f"driver=file,filename={disk.path},node-name=file{i},"
            f"cache.direct={direct},cache.no-flush=off",
            "-blockdev",
            f"driver={disk.format},file=file{i},node-name=disk{i}",
            "-device",
            f"virtio-blk-pci,drive=disk{i},id=vd{i}",
        ]
    # A directly booted kernel needs no network boot ROM; skipping it saves boot time.
    rom = ",romfile=" if spec.boot is not None else ""
    for i, nic in enumerate(spec.nics):
        argv += [
            "-netdev",
            f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=net{i},mac={nic.mac},id=nic{i}{rom}",
        ]
    if incoming is not None:
        argv += ["-incoming", incoming]
    return argv
