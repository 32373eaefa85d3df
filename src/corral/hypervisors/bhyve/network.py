"""Taps on bridges for bhyve's virtio-net: ifconfig(8) on FreeBSD (`ifconfig tapN create`,
`ifconfig bridgeN addm tapN`); on Linux, where only the simulator runs, the same helpers as
the QEMU driver (ip link).

bhyve chooses a NIC's backend by the device name's prefix and opens /dev/tapN, so a NIC runs
on a FreeBSD-style `tapN`, not on corral's tap name (`vt` + hash, which the QEMU driver
uses). `tap_device` picks a free unit, starting from one derived from corral's name so that
a VM usually gets the same device back; the driver records the devices it took in the VM's
runtime directory (taps.json) and gives back exactly those.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

from corral import commands
from corral.errors import HypervisorError
from corral.hypervisors import host_network

IFCONFIG = "/sbin/ifconfig"
TAP_UNITS = range(1000, 0x8000)  # FreeBSD's IF_MAXUNIT is 0x7fff


def on_freebsd() -> bool:
    return sys.platform.startswith("freebsd")


def bridges_argv() -> list[str]:
    return [IFCONFIG, "-g", "bridge"]


def tap_argvs(tap: str, bridge: str) -> list[list[str]]:
    """Create the tap (bhyve opens /dev/TAP), bring it up and add it to the bridge."""
    return [[IFCONFIG, tap, "create", "up"], [IFCONFIG, bridge, "addm", tap]]


def remove_argv(tap: str) -> list[str]:
    return [IFCONFIG, tap, "destroy"]


def interface_exists(name: str) -> bool:
    if on_freebsd():
        return commands.run([IFCONFIG, name], check=False).returncode == 0
    return Path("/sys/class/net", name).exists()


def tap_device(tap: str, taken: Callable[[str], bool] = interface_exists) -> str:
    """A free `tapN` for the NIC corral calls `tap` (the first unit not `taken`, searching
    from one derived from `tap`).

    :raise HypervisorError: every unit is taken."""
    units = len(TAP_UNITS)
    start = int(hashlib.sha1(tap.encode()).hexdigest(), 16) % units
    for i in range(units):
        device = f"tap{TAP_UNITS[(start + i) % units]}"
        if not taken(device):
            return device
    raise HypervisorError(f"no free tap unit in tap{TAP_UNITS[0]}..tap{TAP_UNITS[-1]}")


def bridges() -> set[str]:
    if not on_freebsd():
        return host_network.bridges()
    return set(commands.run(bridges_argv()).stdout.split())


def ensure_tap(tap: str, bridge: str) -> None:
    if not on_freebsd():
        host_network.ensure_tap(tap, bridge)
        return
    exists = commands.run([IFCONFIG, tap], check=False).returncode == 0
    create, attach = tap_argvs(tap, bridge)
    if not exists:
        commands.run(create)
    commands.run(attach, check=False)  # already a member is fine


def remove_tap(tap: str) -> None:
    if not on_freebsd():
        host_network.remove_tap(tap)
        return
    commands.run(remove_argv(tap), check=False)
