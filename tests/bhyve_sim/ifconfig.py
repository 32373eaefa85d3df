"""ifconfig(8) for a simulated host, the calls corral makes (sbin/ifconfig/ifconfig.c,
ifclone.c, ifgroup.c, ifbridge.c): `ifconfig NAME`, `ifconfig -g GROUP`, `ifconfig NAME
create [up]`, `ifconfig NAME destroy`, `ifconfig NAME up`, `ifconfig BRIDGE addm IF`.

The simulated kernel is the Linux network namespace the tool runs in: interfaces are Linux
links (a `tapN` is a Linux tap device, a bridge a Linux bridge of any name: FreeBSD lets a
bridge be renamed and keeps it in the group `bridge`). Messages and exit statuses are
FreeBSD's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

IP = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/usr/sbin/ip"
USAGE = (
    "usage: ifconfig [-j jail] [-DkLmn] [-f type:format] interface address_family\n"
    "       ifconfig -g groupname"
)


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=False)


def links(*selector: str) -> list[dict[str, object]]:
    out = ip("-j", "-d", "link", "show", *selector)
    found: list[dict[str, object]] = json.loads(out.stdout or "[]") if out.returncode == 0 else []
    return found


def exists(name: str) -> bool:
    return ip("link", "show", "dev", name).returncode == 0


def fail(message: str) -> int:
    print(f"ifconfig: {message}", file=sys.stderr)
    return 1


def main(argv: list[str], root: str) -> int:
    if argv[:1] == ["-g"] and len(argv) == 2:
        if argv[1] == "bridge":
            for link in links("type", "bridge"):
                print(link["ifname"])
        return 0
    if not argv or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 1
    name, words = argv[0], argv[1:]
    if words[:1] == ["create"]:
        if exists(name):
            return fail(f"SIOCIFCREATE2 ({name}): File exists")
        if not name.startswith("tap"):
            return fail(f"SIOCIFCREATE2 ({name}): Invalid argument")
        ip("tuntap", "add", "dev", name, "mode", "tap")
        words = words[1:]
    elif not exists(name):
        return fail(f"interface {name} does not exist")
    if not words:
        print(f"{name}: flags=8802<BROADCAST,SIMPLEX,MULTICAST> metric 0 mtu 1500")
        return 0
    if words == ["destroy"]:
        ip("link", "del", name)
        return 0
    if words == ["up"]:
        ip("link", "set", name, "up")
        return 0
    if len(words) == 2 and words[0] == "addm":
        member = words[1]
        if not exists(member):
            return fail(f"BRDGADD {member}: No such file or directory")
        if any(link.get("master") == name for link in links("dev", member)):
            return fail(f"BRDGADD {member}: File exists")
        ip("link", "set", member, "master", name, "up")
        return 0
    print(USAGE, file=sys.stderr)
    return 1
