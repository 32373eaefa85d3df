"""The initramfs writer produces archives that the real cpio(1) reads back intact."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from corral.lab.cpio_archive import CpioEntry, pack_initramfs, pack_newc


def _entries() -> list[CpioEntry]:
    return [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        CpioEntry.symlink("bin/sh", "tool"),
        CpioEntry.directory("dev"),
        CpioEntry.chardev("dev/console", 5, 1),
        CpioEntry.file("odd-size", b"x" * 5),
    ]


def test_cpio_lists_every_member_with_its_type() -> None:
    archive = pack_newc(_entries())
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    by_name = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in lines}
    assert set(by_name) == {"bin", "bin/tool", "bin/sh", "dev", "dev/console", "odd-size"}
    assert by_name["bin"].startswith("d")
    assert by_name["bin/tool"].startswith("-rwxr-xr-x")
    assert by_name["bin/sh"].startswith("l")
    assert by_name["dev/console"].startswith("c")


def test_cpio_extracts_file_contents_exactly(tmp_path: Path) -> None:
    archive = pack_newc([e for e in _entries() if not e.name.startswith("dev/")])
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "odd-size").read_bytes() == b"xxxxx"
    assert (tmp_path / "bin/sh").readlink() == Path("tool")


def test_initramfs_is_gzip_of_newc_and_deterministic() -> None:
    one, two = pack_initramfs(_entries()), pack_initramfs(_entries())
    assert one == two
    assert gzip.decompress(one) == pack_newc(_entries())
    assert gzip.decompress(one).startswith(b"070701")
