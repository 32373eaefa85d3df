"""Which filesystem a directory lives on, and whether that kind of filesystem is shared
between hosts (NFS v3/v4, GlusterFS, CephFS). The mount table is /proc/self/mountinfo on
Linux and `mount -p` (fstab(5) format) on FreeBSD, whose types are named in Linux's words
here: NFS with the `nfsv4` option is `nfs4`, FUSE's `fusefs.SUBTYPE` is `fuse.SUBTYPE`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corral import commands, hostos

SHARED_FSTYPES = {
    "nfs": "NFS v3",
    "nfs4": "NFS v4",
    "fuse.glusterfs": "GlusterFS",
    "glusterfs": "GlusterFS",
    "ceph": "CephFS",
    "fuse.ceph-fuse": "CephFS",
}


@dataclass(frozen=True)
class MountInfo:
    mount_point: Path
    fstype: str
    source: str

    @property
    def shared(self) -> bool:
        """True for filesystems that several hosts mount at once."""
        return self.fstype in SHARED_FSTYPES

    @property
    def label(self) -> str:
        return SHARED_FSTYPES.get(self.fstype, f"local ({self.fstype})")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[MountInfo]:
    """The mounts of a /proc/PID/mountinfo text, in order."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(MountInfo(Path(_unescape(fields[4])), tail[0], _unescape(tail[1])))
    return mounts


def parse_fstab_listing(text: str) -> list[MountInfo]:
    """The mounts of FreeBSD's `mount -p` (device, mount point, type, options, dump, pass;
    a space in a field written as \\040), in order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#"):
            continue
        source, point, fstype, options = (_unescape(f) for f in fields[:4])
        if fstype == "nfs" and "nfsv4" in options.split(","):
            fstype = "nfs4"
        elif fstype.startswith("fusefs."):
            fstype = "fuse." + fstype.removeprefix("fusefs.")
        mounts.append(MountInfo(Path(point), fstype, source))
    return mounts


def mounts() -> list[MountInfo]:
    """This host's mounts: FreeBSD's `mount -p`, or Linux's /proc/self/mountinfo."""
    if hostos.on_freebsd():
        return parse_fstab_listing(commands.run([hostos.tool("sbin/mount"), "-p"]).stdout)
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def mount_of(path: Path, mountinfo: str | None = None) -> MountInfo:
    """The mount that holds `path` (the last, longest matching mount point wins); from
    `mountinfo` text when given (tests), else from this host's mount table."""
    table = parse_mountinfo(mountinfo) if mountinfo is not None else mounts()
    target = path.resolve() if mountinfo is None else path
    best = MountInfo(Path("/"), "unknown", "")
    for mount in table:
        inside = target == mount.mount_point or mount.mount_point in target.parents
        if inside and len(mount.mount_point.parts) >= len(best.mount_point.parts):
            best = mount
    return best
