"""bhyve and bhyvectl command lines for a VM spec (FreeBSD). Pure: builds lists of strings.

From bhyve(8) and bhyvectl(8), and the FreeBSD-UPB migration work CBSD's `bmigrate` uses:
`bhyve -c cpus=N,sockets=S,cores=C,threads=T -m MEM -S -H -w -A -s SLOT,DEVICE,... NAME`,
the VM's name last; `-S` wires guest memory, which live migration requires; `-r FILE`
restores a checkpoint; `-R HOST[,PORT]` waits for a migration from HOST (port 24983 by
default). bhyve reads raw disk images only and boots from UEFI firmware (or bhyveload for
FreeBSD guests); it cannot load a Linux kernel directly. bhyve picks a NIC's network
backend by the device name's prefix (`tap`, `vmnet`, `netgraph`, `netmap:`, `vale`), so the
device given to virtio-net is a FreeBSD `tapN`, never corral's own tap name (network.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from corral.errors import UserInputError
from corral.model import VmSpec

BHYVE = "bhyve"
BHYVECTL = "bhyvectl"
MIGRATION_PORT = 24983
UEFI_FIRMWARE = Path("/usr/local/share/uefi-firmware/BHYVE_UEFI.fd")
FIRST_DEVICE_SLOT = 2  # 0: hostbridge; 31: lpc
NET_BACKEND_PREFIXES = ("tap", "vmnet", "netgraph", "netmap:", "vale")


def check_option_path(field: str, path: object) -> None:
    """bhyve takes a disk's path up to the first ',' and parses the rest as options
    (usr.sbin/bhyve/block_if.c, blockif_legacy_config, then pci_parse_legacy_config); `-l`
    splits its argument the same way. No escape exists, so a path with a ',' is refused.

    :raise UserInputError: the path holds a ',' or a control character."""
    text = str(path)
    if "," in text:
        raise UserInputError(field, f"bhyve cannot take a path with a ',' ({text!r})")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UserInputError(field, "a path must not contain control characters")


def check_spec(spec: VmSpec) -> None:
    """:raise UserInputError: naming what bhyve cannot run."""
    for i, disk in enumerate(spec.disks):
        check_option_path(f"disks[{i}].path", disk.path)
        if disk.format != "raw":
            raise UserInputError(
                f"disks[{i}].format", "bhyve reads raw images only (convert with qemu-img)"
            )
    if spec.boot is not None:
        raise UserInputError(
            "boot",
            "bhyve boots from a disk with UEFI firmware; it cannot"
            " load a kernel and initrd directly",
        )
    if FIRST_DEVICE_SLOT + len(spec.disks) + len(spec.nics) > 30:
        raise UserInputError("disks", "more devices than bhyve's PCI slots 2..30 hold")


def bhyve_argv(
    spec: VmSpec,
    *,
    console: str,
    firmware: Path = UEFI_FIRMWARE,
    restore_from: Path | None = None,
    receive_from: tuple[str, int] | None = None,
    binary: str = BHYVE,
    taps: Sequence[str] | None = None,
) -> list[str]:
    """The bhyve command that runs `spec`; `restore_from` a checkpoint, or `receive_from`
    (host, port) a migration. `console` is a file or an nmdm device for com1. `taps`: the
    host device of each NIC (default: the spec's tap names).

    :raise UserInputError: naming what bhyve cannot run."""
    check_spec(spec)
    devices = list(taps) if taps is not None else [nic.tap for nic in spec.nics]
    if len(devices) != len(spec.nics):
        raise ValueError(f"{len(devices)} tap devices for {len(spec.nics)} NICs")
    for i, device in enumerate(devices):
        if not device.startswith(NET_BACKEND_PREFIXES):
            raise UserInputError(
                f"nics[{i}].tap",
                f"bhyve has no network backend for {device!r}: the device name must start"
                f" with one of {', '.join(NET_BACKEND_PREFIXES)}",
            )
    check_option_path("console", console)
    check_option_path("firmware", firmware)
    if restore_from is not None:
        check_option_path("checkpoint", restore_from)
    topo = spec.cpu.effective_topology
    argv = [
        binary,
        "-c",
        f"cpus={spec.cpu.count},sockets={topo.sockets},cores={topo.cores},threads={topo.threads}",
        "-m",
        f"{spec.memory_mib}M",
        "-S",
        "-H",
        "-w",
        "-A",
        "-s",
        "0,hostbridge",
    ]
    slot = FIRST_DEVICE_SLOT
    for disk in spec.disks:
        argv += ["-s", f"{slot},virtio-blk,{disk.path}"]
        slot += 1
    for nic, device in zip(spec.nics, devices, strict=True):
        argv += ["-s", f"{slot},virtio-net,{device},mac={nic.mac}"]
        slot += 1
    argv += ["-s", "31,lpc", "-l", f"com1,{console}", "-l", f"bootrom,{firmware}"]
    if restore_from is not None:
        argv += ["-r", str(restore_from)]
    if receive_from is not None:
        host, port = receive_from
        argv += ["-R", f"{host},{port}"]
    argv.append(spec.name)
    return argv


def destroy_argv(name: str, *, binary: str = BHYVECTL) -> list[str]:
    return [binary, f"--vm={name}", "--destroy"]


def checkpoint_argv(name: str, file: Path, *, suspend: bool, binary: str = BHYVECTL) -> list[str]:
    """Memory in FILE, device and vCPU state in FILE.kern, metadata in FILE.meta."""
    return [binary, f"--vm={name}", f"--{'suspend' if suspend else 'checkpoint'}={file}"]


def migrate_argv(
    name: str,
    host: str,
    port: int | str = MIGRATION_PORT,
    *,
    live: bool = True,
    binary: str = BHYVECTL,
) -> list[str]:
    """Warm (guest paused, then copied) or live (pre-copy in fixed rounds); `port` may be a
    placeholder the tunnel fills in."""
    flag = "--migrate-live" if live else "--migrate"
    return [binary, f"--vm={name}", f"{flag}={host},{port}"]
