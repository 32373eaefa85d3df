"""The simulator accepts the documented flags and refuses others the way bhyve(8) and
bhyvectl(8) do, so the driver is tested against the tools' real surface."""

from __future__ import annotations

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
    out = tool(host, "bhyve", "-c", "cpus=4,sockets=1,cores=2,threads=1", "vm")
    assert out.returncode == 1
    assert "invalid cpu topology" in out.stderr


def test_bhyve_refuses_a_missing_disk_and_an_unknown_device(host: SimHost) -> None:
    missing = tool(host, "bhyve", "-s", "2,virtio-blk,/nonexistent.img", "vm")
    assert missing.returncode == 4
    assert "Could not open backing file" in missing.stderr
    unknown = tool(host, "bhyve", "-s", "2,floppy", "vm")
    assert unknown.returncode == 4
    assert 'unknown device "floppy"' in unknown.stderr


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
