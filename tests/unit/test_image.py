"""The test guest image builder: kernel package lookup, cache key, initramfs contents and the
extraction of a kernel from a real .deb (built here with dpkg-deb)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from corral.errors import EnvironmentProblem
from corral.lab.image import (
    VIRTIO_MODULES,
    check_static,
    extract_kernel,
    guest_cmdline,
    guest_scripts,
    image_key,
    initramfs_entries,
    parse_kernel_package,
)

APT_CACHE_DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
"""


def test_kernel_package_is_taken_from_the_meta_package_dependency() -> None:
    assert parse_kernel_package(APT_CACHE_DEPENDS) == "linux-image-6.1.0-56-amd64"


def test_missing_kernel_dependency_says_to_update_package_lists() -> None:
    with pytest.raises(EnvironmentProblem, match="apt-get update"):
        parse_kernel_package("linux-image-amd64\n")


def test_cache_key_changes_with_any_script_or_busybox() -> None:
    scripts = guest_scripts()
    base = image_key(b"busybox", scripts)
    assert image_key(b"busybox", scripts) == base
    assert image_key(b"busybox2", scripts) != base
    changed = dict(scripts, init=scripts["init"] + b"\n# changed\n")
    assert image_key(b"busybox", changed) != base


def test_guest_scripts_include_init_and_the_workers() -> None:
    scripts = guest_scripts()
    assert set(scripts) == {
        "init",
        "bin/counter-stream",
        "bin/dirty-mem",
        "bin/disk-seq",
        "bin/disk-pattern",
        "bin/disk-writer",
    }
    assert scripts["init"].startswith(b"#!/bin/busybox sh")
    assert b"BOOTED" in scripts["init"]
    assert b"DISKERR" in scripts["bin/disk-seq"]
    assert b"PATERR" in scripts["bin/disk-pattern"]
    for worker in ("disk-seq", "disk-pattern", "disk-writer"):
        assert f"/bin/{worker}".encode() in scripts["init"]  # started by init when asked


def test_dynamic_busybox_is_refused() -> None:
    fake_dynamic = b"\x7fELF" + b"\0" * 100 + b"/lib64/ld-linux-x86-64.so.2" + b"\0" * 100
    with pytest.raises(EnvironmentProblem, match="busybox-static"):
        check_static(fake_dynamic, Path("/bin/busybox"))
    with pytest.raises(EnvironmentProblem, match="not an ELF"):
        check_static(b"#!/bin/sh\n", Path("/bin/busybox"))
    check_static(b"\x7fELF" + b"\0" * 200, Path("/bin/busybox"))


def test_initramfs_holds_console_busybox_scripts_and_modules_in_load_order() -> None:
    modules = {name: name.encode() for name in reversed(VIRTIO_MODULES)}
    entries = {e.name: e for e in initramfs_entries(b"BB", guest_scripts(), modules)}
    assert entries["dev/console"].rdev == (5, 1)
    assert entries["bin/busybox"].data == b"BB"
    assert entries["init"].mode & 0o111
    order = entries["etc/corral-modules"].data.decode().split()
    assert order == list(VIRTIO_MODULES)
    assert entries["lib/modules/virtio_net.ko"].data == b"virtio_net"


def test_modules_built_into_the_kernel_are_simply_not_loaded() -> None:
    entries = {e.name: e for e in initramfs_entries(b"BB", {}, {"virtio_blk": b"m"})}
    assert entries["etc/corral-modules"].data == b"virtio_blk\n"


def test_kernel_and_modules_are_extracted_from_a_real_deb(tmp_path: Path) -> None:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: linux-image-test\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: corral <corral@localhost>\nDescription: test kernel\n"
    )
    (tree / "boot").mkdir()
    (tree / "boot/vmlinuz-9.9.9-test").write_bytes(b"KERNEL")
    moddir = tree / "lib/modules/9.9.9-test/kernel/drivers/virtio"
    moddir.mkdir(parents=True)
    (moddir / "virtio.ko").write_bytes(b"VIRTIO")
    (moddir / "unrelated.ko").write_bytes(b"NO")
    deb = tmp_path / "kernel.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    vmlinuz, modules = extract_kernel(deb)
    assert vmlinuz == b"KERNEL"
    assert modules == {"virtio": b"VIRTIO"}


def test_a_deb_without_a_kernel_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: empty\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: corral <corral@localhost>\nDescription: nothing\n"
    )
    deb = tmp_path / "empty.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(EnvironmentProblem, match="vmlinuz"):
        extract_kernel(deb)


def test_guest_cmdline_carries_only_the_options_asked_for() -> None:
    plain = guest_cmdline()
    assert "console=ttyS0" in plain
    assert "corral.ip" not in plain
    assert "corral.dirty" not in plain
    full = guest_cmdline(ip="10.0.0.5/24", port=7001, dirty_mib=64, disk="vda")
    assert {
        "corral.ip=10.0.0.5/24",
        "corral.port=7001",
        "corral.dirty=64",
        "corral.disk=vda",
    } <= set(full.split())
