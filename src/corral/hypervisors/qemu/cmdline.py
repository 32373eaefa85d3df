"""The qemu-system command line for a VM spec. Pure: builds a list of strings.

The same spec must give the same guest-visible machine on every node, since a migration's
destination is started from it: machine type pinned, CPU model named, devices in a fixed
order with fixed ids. No path is ever spliced into QEMU's `key=value,...` option syntax
unescaped: disks are `-blockdev` JSON, and the few option strings that hold a path double
its commas (QEMU's own escape). Two QMP monitors: one for operations, one for status queries, so a
long operation (a migration) never blinds `status`.
"""

from __future__ import annotations

import json

from corral.hypervisors.base import VmLayout
from corral.model import VmSpec

QEMU_BINARY = "qemu-system-x86_64"


def opt_value(text: object) -> str:
    """`text` as one value of QEMU's `key=value,...` option syntax: a ',' is written ',,'."""
    return str(text).replace(",", ",,")


def blockdev_json(**options: object) -> str:
    """A `-blockdev` argument as JSON, so a path is a string, never more options."""
    return json.dumps(options, separators=(",", ":"))


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
        f"unix:{opt_value(layout.control_socket)},server=on,wait=off",
        "-qmp",
        f"unix:{opt_value(layout.status_socket)},server=on,wait=off",
        "-pidfile",
        str(layout.pid_file),
        "-chardev",
        f"file,id=console0,path={opt_value(layout.console_log)},append=on",
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
        argv += [
            "-blockdev",
            blockdev_json(
                driver="file",
                filename=str(disk.path),
                **{"node-name": f"file{i}"},
                cache={"direct": disk.cache_direct, "no-flush": False},
            ),
            "-blockdev",
            blockdev_json(driver=disk.format, file=f"file{i}", **{"node-name": f"disk{i}"}),
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
