"""Writing initramfs archives in the cpio "newc" format the Linux kernel unpacks.

Written in Python rather than by calling cpio(1) so that the archive is built without root,
deterministically (fixed mtimes and inode numbers), and with device nodes such as
/dev/console that an unprivileged tree could not hold.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

MAGIC = b"070701"


@dataclass(frozen=True)
class CpioEntry:
    """One member: a directory, regular file, symlink or character device."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, name: str) -> CpioEntry:
        return cls(name, stat.S_IFDIR | 0o755)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def chardev(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, b"", (major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(ino: int, entry: CpioEntry, namesize: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino,
        entry.mode,
        0,
        0,
        nlink,
        0,
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        namesize,
        0,
    )
    return MAGIC + b"".join(f"{v:08X}".encode() for v in fields)


def pack_newc(entries: list[CpioEntry]) -> bytes:
    """The uncompressed newc archive of `entries`, in order, with its trailer."""
    out = bytearray()
    members = [*entries, CpioEntry("TRAILER!!!", 0)]
    for ino, entry in enumerate(members, start=1):
        name = entry.name.lstrip("/").encode() + b"\0"
        head = _header(0 if entry.name == "TRAILER!!!" else ino, entry, len(name))
        out += head + name + _pad4(len(head) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def pack_initramfs(entries: list[CpioEntry]) -> bytes:
    """A gzip-compressed newc archive, ready to pass to a kernel as its initrd."""
    return gzip.compress(pack_newc(entries), compresslevel=6, mtime=0)
