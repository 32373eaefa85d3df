"""Linux bridges and tap devices for VMs' NICs (in the caller's network namespace).

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import json

from corral import commands


def bridges() -> set[str]:
    """Names of the bridges on this host."""
    out = commands.run(["ip", "-j", "link", "show", "type", "bridge"]).stdout.strip()
    return {str(link["ifname"]) for link in json.loads(out)} if out else set()


def link_exists(name: str) -> bool:
    return commands.succeeds(["ip", "link", "show", "dev", name])


def ensure_tap(tap: str, bridge: str) -> None:
    """A persistent tap device in `bridge`, up (created if missing)."""
    if not link_exists(tap):
        commands.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    commands.run(["ip", "link", "set", tap, "master", bridge, "up"])


def remove_tap(tap: str) -> None:
    if link_exists(tap):
        commands.run(["ip", "link", "del", tap], check=False)
