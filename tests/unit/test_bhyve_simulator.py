"""The simulator accepts the documented flags and refuses others the way bhyve(8) and
bhyvectl(8) do, so the driver is tested against the tools' real surface."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from corral.hypervisors.bhyve.cmdline import bhyve_argv
from corral.model import VmSpec
from tests.bhyve_sim.host import SimHost, install


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    return install(tmp_path / "host")


def tool(host: SimHost, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = host.root / ("usr/sbin" if name.startswith("bhyve") else "sbin") / name
    return subprocess.run(
        [str(path), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_bhyve_refuses_an_unknown_option_with_usage(host: SimHost) -> None:
    out = tool(host, "bhyve", "-Z", "vm")
    assert out.returncode == 1
    assert out.stderr.startswith("bhyve: illegal option -- Z\nUsage: bhyve")


def test_bhyve_refuses_a_topology_that_does_not_add_up(host: SimHost) -> None:
    # bhyverun.c: topology_parse refuses an unknown key (EX_USAGE); calc_topolopgy a product
    # that is not the vCPU count (exit 4).
    out = tool(host, "bhyve", "-c", "cpus=4,sockets=1,cores=2,threads=1", "vm")
    assert out.returncode == 4
    assert "Topology (1 sockets, 2 cores, 1 threads) does not match 4 vCPUs" in out.stderr
    out = tool(host, "bhyve", "-c", "cpus=2,dies=2", "vm")
    assert (out.returncode, out.stderr.strip()) == (
        64,
        "bhyve: invalid cpu topology 'cpus=2,dies=2'",
    )


def test_bhyve_refuses_a_missing_disk_and_an_unknown_device(host: SimHost) -> None:
    missing = tool(host, "bhyve", "-s", "2,virtio-blk,/nonexistent.img", "vm")
    assert missing.returncode == 4
    assert "Could not open backing file" in missing.stderr
    unknown = tool(host, "bhyve", "-s", "2,floppy", "vm")
    assert unknown.returncode == 4
    assert unknown.stderr.strip() == 'pci slot 0:2:0: unknown device "floppy"'


def boot_args(host: SimHost, console: str, *more: str) -> list[str]:
    return [
        "-s",
        "0,hostbridge",
        "-s",
        "31,lpc",
        "-l",
        f"com1,{console}",
        "-l",
        f"bootrom,{host.firmware}",
        *more,
    ]


def test_a_disk_path_with_a_comma_is_cut_there(host: SimHost, tmp_path: Path) -> None:
    """block_if.c reads a path up to the first ',' and the rest as options: the image
    `a,b.img` is opened as `a`, which does not exist."""
    disk = tmp_path / "a,b.img"
    disk.write_bytes(b"")
    out = tool(host, "bhyve", "-s", f"2,virtio-blk,{disk}", "vm")
    assert out.returncode == 4
    assert f"Could not open backing file: {tmp_path / 'a'}: No such file" in out.stderr


def test_a_slot_taken_twice_is_refused(host: SimHost, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"")
    out = tool(host, "bhyve", "-s", f"3,virtio-blk,{disk}", "-s", "3:0,virtio-rnd", "vm")
    assert (out.returncode, out.stderr.strip()) == (4, "pci slot 0:3:0 already occupied!")


def test_com1_must_be_a_tty(host: SimHost, tmp_path: Path) -> None:
    """uart_backend.c, uart_tty_backend: the backend is opened and refused unless isatty."""
    log = tmp_path / "console.log"
    log.write_text("")
    out = tool(host, "bhyve", *boot_args(host, str(log)), "vm")
    assert out.returncode == 4
    assert f"Unable to initialize backend '{log}' for LPC device com1" in out.stderr
    assert "Inappropriate ioctl for device" in out.stderr
    assert not (host.vmm_dir / "vm").exists()


def test_an_nmdm_side_needs_nmdm_ko_and_then_is_a_tty(host: SimHost) -> None:
    side = host.root / "dev" / "nmdm1234A"
    out = tool(host, "bhyve", *boot_args(host, str(side)), "vm")
    assert out.returncode == 4
    assert "No such file or directory" in out.stderr  # no nmdm.ko: no pair is created
    load = tool(host, "kldload", "nmdm")
    assert load.returncode == 0, load.stderr
    again = tool(host, "kldload", "nmdm")
    assert again.returncode == 1
    assert "already loaded" in again.stderr
    assert tool(host, "kldload", "-n", "nmdm").returncode == 0
    assert tool(host, "kldstat", "-q", "-m", "nmdm").returncode == 0


def test_memory_must_be_whole_pages(host: SimHost) -> None:
    # vm_parse_memsize: a number of a megabyte or more is bytes; vmm.c's vm_alloc_memseg
    # refuses a length that is not page-aligned (EINVAL).
    out = tool(host, "bhyve", "-m", str((64 << 20) + 100), *boot_args(host, "stdio"), "vm")
    assert (out.returncode, out.stderr.strip()) == (4, "Unable to setup memory (22)")
    bad = tool(host, "bhyve", "-m", "64Q", "vm")
    assert (bad.returncode, bad.stderr.strip()) == (64, "bhyve: invalid memsize '64Q'")


def test_more_vcpus_than_hw_vmm_maxcpu_is_refused(host: SimHost) -> None:
    host.configure(sysctl={"hw.vmm.maxcpu": "2"})
    out = tool(host, "bhyve", "-c", "4", *boot_args(host, "stdio"), "vm")
    assert (out.returncode, out.stderr.strip()) == (4, "4 vCPUs requested but only 2 available")


def test_no_vmm_ko_no_vm(host: SimHost) -> None:
    host.configure(kld=[])
    out = tool(host, "bhyve", *boot_args(host, "stdio"), "vm")
    assert (out.returncode, out.stderr.strip()) == (4, "vm_create: No such file or directory")
    assert tool(host, "sysctl", "-n", "hw.vmm.maxcpu").returncode == 1  # gone with vmm.ko


def test_a_name_in_dev_vmm_that_runs_is_busy(host: SimHost) -> None:
    """do_open: vm_create fails with EEXIST, and with a bootrom bhyve reinitialises the VM,
    which vmm refuses while its vCPUs run (a stale entry of a dead bhyve is reused)."""
    (host.vmm_dir / "vm").write_text(json.dumps({"pid": os.getpid(), "memsize": 1}))
    out = tool(host, "bhyve", *boot_args(host, "stdio"), "vm")
    assert (out.returncode, out.stderr.strip()) == (4, "vm_reinit: Device busy")


def test_bhyve_refuses_a_nic_device_of_no_known_backend(host: SimHost) -> None:
    out = tool(host, "bhyve", "-s", "2,virtio-net,vt1234abcd0,mac=52:54:00:00:00:01", "vm")
    assert out.returncode == 4
    assert 'no backend for "vt1234abcd0"' in out.stderr


def test_every_flag_the_driver_builds_is_accepted(host: SimHost, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"")
    spec = VmSpec.model_validate(
        {
            "name": "v",
            "memory_mib": 32,
            "cpu": {"count": 4, "topology": {"sockets": 2, "cores": 2, "threads": 1}},
            "disks": [{"path": str(disk), "format": "raw"}],
        }
    )
    argv = bhyve_argv(spec, console=str(tmp_path / "c"), firmware=host.firmware)
    out = tool(host, "bhyve", *argv[1:-1], "-h", "v")  # -h: usage after parsing, exit 0
    assert out.returncode == 0, out.stderr


def test_bhyvectl_refuses_unknown_options_and_lists_what_it_has(host: SimHost) -> None:
    out = tool(host, "bhyvectl", "--vm=v", "--pause")
    assert out.returncode == 1
    assert out.stderr.startswith("bhyvectl: unrecognized option `--pause'")
    assert "--checkpoint" in out.stderr
    assert "--migrate-live" in out.stderr
    host.configure(snapshot=False, migration=False)
    out = tool(host, "bhyvectl", "--vm=v", "--checkpoint=/tmp/x")
    assert out.returncode == 1
    assert "--checkpoint" not in out.stderr.split("\n", 1)[1]  # built without BHYVE_SNAPSHOT
    assert tool(host, "bhyve", "-r", "/tmp/x", "v").stderr.startswith("bhyve: illegal option")


def test_bhyvectl_on_a_vm_that_does_not_exist(host: SimHost) -> None:
    out = tool(host, "bhyvectl", "--vm=nope", "--destroy")
    assert out.returncode == 1
    assert "vm_open: nope could not be opened" in out.stderr


def test_sysctl_and_kldstat(host: SimHost) -> None:
    assert tool(host, "sysctl", "-n", "hw.machine_arch").stdout == "amd64\n"
    assert tool(host, "sysctl", "-n", "hw.nope").stderr.startswith("sysctl: unknown oid")
    assert tool(host, "kldstat", "-q", "-m", "vmm").returncode == 0
    host.configure(kld=[])
    assert tool(host, "kldstat", "-q", "-m", "vmm").returncode == 1
