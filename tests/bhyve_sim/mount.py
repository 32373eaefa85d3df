"""mount(8) for a simulated host: `mount -p`, the mounted filesystems in fstab(5) format
(sbin/mount/mount.c, putfsent: device, mount point, type, options, 0 0; a space in a
field is written \\040). The simulated kernel is Linux, read from /proc/self/mountinfo;
types are given FreeBSD's names: NFS is `nfs` with `nfsv4` among the options for v4, a FUSE
filesystem `fusefs.SUBTYPE`."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str], root: str) -> int:
    if argv != ["-p"]:
        print("usage: mount -p (the simulated mount)", file=sys.stderr)
        return 1
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 3:
            continue
        # mountinfo escapes as octal already: keep its escapes, fstab uses the same ones.
        point, options, (fstype, source) = fields[4], fields[5], tail[:2]
        if fstype in ("nfs", "nfs4"):
            options += ",nfsv4" if fstype == "nfs4" else ",nfsv3"
            fstype = "nfs"
        elif fstype.startswith("fuse."):
            fstype = "fusefs." + fstype.removeprefix("fuse.")
        print(f"{source}\t{point}\t{fstype}\t{options}\t0 0")
    return 0
