"""Taps on bridges for bhyve's virtio-net: ifconfig(8) on FreeBSD (`ifconfig tapN create`,
`ifconfig bridgeN addm tapN`); on Linux, where only the simulator runs, the same helpers as
the QEMU driver (ip link).

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import sys

from corral import commands
from corral.hypervisors import host_network

IFCONFIG = "/sbin/ifconfig"


def on_freebsd() -> bool:
    return sys.platform.startswith("freebsd")


def bridges_argv() -> list[str]:
    return [IFCONFIG, "-g", "bridge"]


def tap_argvs(tap: str, bridge: str) -> list[list[str]]:
    """Create the tap (bhyve opens /dev/TAP), bring it up and add it to the bridge."""
    return [[IFCONFIG, tap, "create", "up"], [IFCONFIG, bridge, "addm", tap]]


def remove_argv(tap: str) -> list[str]:
    return [IFCONFIG, tap, "destroy"]


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
