"""The QEMU command line says exactly what the spec says, in a migratable form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.hypervisors.base import VmLayout
from corral.hypervisors.qemu.cmdline import qemu_argv
from corral.model import BootSpec, CpuSpec, CpuTopology, DiskSpec, NicSpec, VmSpec

PATHS = VmLayout(Path("/run/vm"), Path("/shared/system/vm1/checkpoints"))


def _spec() -> VmSpec:
    return VmSpec(
        name="vm1",
        memory_mib=512,
        cpu=CpuSpec(count=4, topology=CpuTopology(sockets=2, cores=1, threads=2), model="Westmere"),
        disks=(DiskSpec(path=Path("/shared/vm1.qcow2")),),
        nics=(NicSpec(bridge="br0", mac="52:54:00:00:00:01", tap="t-vm1"),),
        boot=BootSpec(kernel=Path("/k"), initrd=Path("/i"), cmdline="console=ttyS0"),
    )


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_topology_model_memory_and_machine_are_passed() -> None:
    argv = qemu_argv(_spec(), PATHS)
    assert _value(argv, "-smp") == "4,sockets=2,cores=1,threads=2"
    assert _value(argv, "-cpu") == "Westmere"
    assert _value(argv, "-m") == "512M"
    assert _value(argv, "-machine") == "pc-q35-7.2"
    assert _value(argv, "-accel") == "tcg"


def test_qmp_console_and_pidfile_go_to_the_runtime_paths() -> None:
    argv = qemu_argv(_spec(), PATHS)
    monitors = [argv[i + 1] for i, a in enumerate(argv) if a == "-qmp"]
    assert monitors == [
        "unix:/run/vm/qmp.sock,server=on,wait=off",
        "unix:/run/vm/qmp-status.sock,server=on,wait=off",
    ]
    assert _value(argv, "-pidfile") == "/run/vm/vm.pid"
    assert "path=/run/vm/console.log" in _value(argv, "-chardev")


def test_disks_bypass_the_host_cache_and_nics_keep_their_mac() -> None:
    argv = qemu_argv(_spec(), PATHS)
    file_node = json.loads(argv[argv.index("-blockdev") + 1])
    assert file_node["cache"] == {"direct": True, "no-flush": False}
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0,romfile=" in argv
    assert "tap,id=net0,ifname=t-vm1,script=no,downscript=no" in argv


def test_paused_start_adds_minus_s() -> None:
    assert "-S" not in qemu_argv(_spec(), PATHS)
    assert "-S" in qemu_argv(_spec(), PATHS, paused=True)


def test_incoming_is_added_only_for_a_migration_target() -> None:
    assert "-incoming" not in qemu_argv(_spec(), PATHS)
    assert _value(qemu_argv(_spec(), PATHS, incoming="defer"), "-incoming") == "defer"


HOSTILE = {
    "comma": "/images/a.qcow2,driver=raw,filename=/var/lib/corral/pki/ca.key",
    "equals": "/images/a=b.qcow2",
    "newline": "/images/a\n-blockdev\nx.qcow2",
    "leading dash": "/-blockdev/a.qcow2",
}


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_disk_path_stays_one_json_string(hostile: str) -> None:
    # Built without validation: the builder alone must keep the path one value.
    disk = DiskSpec.model_construct(path=Path(hostile), format="qcow2", cache_direct=True)
    spec = _spec().model_copy(update={"disks": (disk,)})
    argv = qemu_argv(spec, PATHS)
    plain = qemu_argv(_spec(), PATHS)
    assert len(argv) == len(plain)
    blockdevs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    assert blockdevs[0]["filename"] == hostile
    assert set(blockdevs[0]) == {"driver", "filename", "node-name", "cache"}
    assert blockdevs[1] == {"driver": "qcow2", "file": "file0", "node-name": "disk0"}


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_runtime_path_doubles_its_commas(hostile: str) -> None:
    layout = VmLayout(Path(hostile), Path("/shared/system/vm1/checkpoints"))
    argv = qemu_argv(_spec(), layout)
    chardev = _value(argv, "-chardev")
    assert chardev == f"file,id=console0,path={hostile.replace(',', ',,')}/console.log,append=on"
    # QEMU's parser splits on single commas only: the options are exactly these three.
    parts = chardev.replace(",,", "\0").split(",")
    assert [p.split("=")[0] for p in parts] == ["file", "id", "path", "append"]


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_kernel_path_is_one_argument(hostile: str) -> None:
    boot = BootSpec.model_construct(kernel=Path(hostile), initrd=None, cmdline="")
    argv = qemu_argv(_spec().model_copy(update={"boot": boot}), PATHS)
    assert _value(argv, "-kernel") == hostile
