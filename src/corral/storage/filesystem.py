"""Which filesystem a directory lives on, read from /proc/self/mountinfo, and whether that
kind of filesystem is shared between hosts (NFS v3/v4, GlusterFS, CephFS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def mount_of(path: Path, mountinfo: str | None = None) -> MountInfo:
    """The mount that holds `path` (the last, longest matching mount point wins)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    target = path.resolve() if mountinfo is None else path
    best = MountInfo(Path("/"), "unknown", "")
    for mount in parse_mountinfo(text):
        inside = target == mount.mount_point or mount.mount_point in target.parents
        if inside and len(mount.mount_point.parts) >= len(best.mount_point.parts):
            best = mount
    return best
