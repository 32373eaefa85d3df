"""Taps on bridges for bhyve's virtio-net, with ifconfig(8): `ifconfig tapN create up`,
`ifconfig BRIDGE addm tapN`, `ifconfig tapN destroy`, `ifconfig -g bridge` (the interfaces in
the group `bridge`, FreeBSD's list of bridges). The same calls run on the simulated FreeBSD
host of the tests, whose ifconfig stands in for FreeBSD's.

bhyve chooses a NIC's backend by the device name's prefix and opens /dev/tapN, so a NIC runs
on a FreeBSD-style `tapN`, not on corral's tap name (`vt` + hash, which the QEMU driver
uses). `tap_device` picks a free unit, starting from one derived from corral's name so that
a VM usually gets the same device back; the driver records the devices it took in the VM's
runtime directory (taps.json) and gives back exactly those.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from corral import commands
from corral.errors import HypervisorError

TAP_UNITS = range(1000, 0x8000)  # FreeBSD's IF_MAXUNIT is 0x7fff


def bridges_argv(ifconfig: str) -> list[str]:
    return [ifconfig, "-g", "bridge"]


def tap_argvs(ifconfig: str, tap: str, bridge: str) -> list[list[str]]:
    """Create the tap (bhyve opens /dev/TAP), bring it up and add it to the bridge."""
    return [[ifconfig, tap, "create", "up"], [ifconfig, bridge, "addm", tap]]


def remove_argv(ifconfig: str, tap: str) -> list[str]:
    return [ifconfig, tap, "destroy"]


def interface_exists(ifconfig: str, name: str) -> bool:
    return commands.run([ifconfig, name], check=False).returncode == 0


def tap_device(tap: str, taken: Callable[[str], bool]) -> str:
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


def bridges(ifconfig: str) -> set[str]:
    return set(commands.run(bridges_argv(ifconfig)).stdout.split())


def ensure_tap(ifconfig: str, tap: str, bridge: str) -> None:
    create, attach = tap_argvs(ifconfig, tap, bridge)
    if not interface_exists(ifconfig, tap):
        commands.run(create)
    commands.run(attach, check=False)  # already a member is fine


def remove_tap(ifconfig: str, tap: str) -> None:
    commands.run(remove_argv(ifconfig, tap), check=False)
