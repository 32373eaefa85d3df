"""The qemu-system command line for a VM spec. Pure: builds a list of strings.

The same spec must give the same guest-visible machine on every node, since a migration's
destination is started from it: machine type pinned, CPU model named, devices in a fixed
order with fixed ids. Two QMP monitors: one for operations, one for status queries, so a
long operation (a migration) never blinds `status`.
"""

from __future__ import annotations

from corral.hypervisors.base import VmLayout
from corral.model import VmSpec

QEMU_BINARY = "qemu-system-x86_64"


def qemu_argv(
    spec: VmSpec,
    layout: VmLayout,
    *,
    accel: str = "tcg",
    incoming: str | None = None,
    paused: bool = False,
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
        f"unix:{layout.control_socket},server=on,wait=off",
        "-qmp",
        f"unix:{layout.status_socket},server=on,wait=off",
        "-pidfile",
        str(layout.pid_file),
        "-chardev",
        f"file,id=console0,path={layout.console_log},append=on",
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
    if paused:
        argv.append("-S")
    if incoming is not None:
        argv += ["-incoming", incoming]
    return argv
