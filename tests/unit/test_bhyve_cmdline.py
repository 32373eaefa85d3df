"""bhyve command lines for each spec feature: topology, memory, disks, NICs, boot modes,
checkpoints and migration (the documented flags of bhyve(8) and bhyvectl(8))."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import HypervisorError, UserInputError
from corral.hypervisors.bhyve.cmdline import (
    bhyve_argv,
    checkpoint_argv,
    destroy_argv,
    migrate_argv,
)
from corral.model import BootSpec, CpuSpec, CpuTopology, DiskSpec, NicSpec, VmSpec


def spec(**changes: object) -> VmSpec:
    base = VmSpec(
        name="web1",
        memory_mib=1024,
        cpu=CpuSpec(count=4, topology=CpuTopology(sockets=2, cores=2, threads=1)),
        disks=(DiskSpec(path=Path("/vm/web1/disk0.img"), format="raw"),),
        nics=(NicSpec(bridge="bridge0", mac="52:54:00:00:00:07", tap="tap7"),),
    )
    return base.model_copy(update=changes)


def test_topology_memory_and_wired_memory() -> None:
    argv = bhyve_argv(spec(), console="/vm/web1/console.log")
    assert argv[:5] == ["bhyve", "-c", "cpus=4,sockets=2,cores=2,threads=1", "-m", "1024M"]
    assert {"-S", "-H", "-w", "-A"} <= set(argv)  # -S: wired memory, needed to migrate
    assert argv[-1] == "web1"  # the name comes last


def test_devices_take_slots_in_order_after_the_hostbridge() -> None:
    argv = bhyve_argv(spec(), console="/dev/nmdm0A")
    slots = [argv[i + 1] for i, a in enumerate(argv) if a == "-s"]
    assert slots == [
        "0,hostbridge",
        "2,virtio-blk,/vm/web1/disk0.img",
        "3,virtio-net,tap7,mac=52:54:00:00:00:07",
        "31,lpc",
    ]
    lpc = [argv[i + 1] for i, a in enumerate(argv) if a == "-l"]
    assert lpc[0] == "com1,/dev/nmdm0A"
    assert lpc[1].startswith("bootrom,")


def test_restore_and_receive() -> None:
    restored = bhyve_argv(spec(), console="c", restore_from=Path("/ck/web1"))
    assert restored[restored.index("-r") + 1] == "/ck/web1"
    receiving = bhyve_argv(spec(), console="c", receive_from=("127.0.0.1", 24983))
    assert receiving[receiving.index("-R") + 1] == "127.0.0.1,24983"
    assert receiving[-1] == "web1"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"disks": (DiskSpec(path=Path("/vm/d.qcow2")),)}, "disks[0].format"),
        ({"boot": BootSpec(kernel=Path("/boot/vmlinuz"))}, "boot"),
    ],
)
def test_what_bhyve_cannot_run_is_refused_with_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(UserInputError) as info:
        bhyve_argv(spec(**changes), console="c")
    assert info.value.field == field


def test_bhyvectl_commands() -> None:
    assert destroy_argv("web1") == ["bhyvectl", "--vm=web1", "--destroy"]
    assert checkpoint_argv("web1", Path("/ck/a"), suspend=False) == [
        "bhyvectl",
        "--vm=web1",
        "--checkpoint=/ck/a",
    ]
    assert checkpoint_argv("web1", Path("/ck/a"), suspend=True)[-1] == "--suspend=/ck/a"
    assert migrate_argv("web1", "10.0.0.2") == [
        "bhyvectl",
        "--vm=web1",
        "--migrate-live=10.0.0.2,24983",
    ]
    assert migrate_argv("web1", "10.0.0.2", 4000, live=False)[-1] == "--migrate=10.0.0.2,4000"


def test_nics_run_on_the_tap_devices_given() -> None:
    argv = bhyve_argv(spec(), console="c", taps=["tap1234"])
    assert "3,virtio-net,tap1234,mac=52:54:00:00:00:07" in argv  # slot 2 is the disk
    with pytest.raises(UserInputError) as refused:
        bhyve_argv(spec(), console="c", taps=["vt1234abcd0"])
    assert refused.value.field == "nics[0].tap"
    assert "no network backend" in str(refused.value)


def test_a_free_tap_unit_is_chosen_from_the_name() -> None:
    from corral.hypervisors.bhyve import network

    first = network.tap_device("vtabcdef010", lambda d: False)
    assert first == network.tap_device("vtabcdef010", lambda d: False)  # the same each time
    assert first.startswith("tap")
    assert int(first[3:]) in network.TAP_UNITS
    second = network.tap_device("vtabcdef010", lambda d: d == first)
    assert second != first
    assert int(second[3:]) in network.TAP_UNITS
    with pytest.raises(HypervisorError, match="no free tap unit"):
        network.tap_device("vtabcdef010", lambda d: True)


def test_taps_on_freebsd_are_made_with_ifconfig() -> None:
    from corral.hypervisors.bhyve import network
    from corral.hypervisors.bhyve.host import BhyveHost

    ifconfig = BhyveHost().ifconfig
    assert network.bridges_argv(ifconfig) == ["/sbin/ifconfig", "-g", "bridge"]
    assert network.tap_argvs(ifconfig, "tap7", "bridge0") == [
        ["/sbin/ifconfig", "tap7", "create", "up"],
        ["/sbin/ifconfig", "bridge0", "addm", "tap7"],
    ]
    assert network.remove_argv(ifconfig, "tap7") == ["/sbin/ifconfig", "tap7", "destroy"]


HOSTILE = {
    "comma": "/vm/web1/disk0.img,ro,sectorsize=512",
    "equals": "/vm/web1/a=b.img",
    "newline": "/vm/web1/a\n-s\n9,virtio-blk,/etc/master.passwd",
    "leading dash": "/-s/disk0.img",
}


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_disk_path_is_refused_or_stays_the_path(hostile: str) -> None:
    disk = DiskSpec.model_construct(path=Path(hostile), format="raw", cache_direct=True)
    bad = spec(disks=(disk,))
    if "," in hostile or "\n" in hostile:
        with pytest.raises(UserInputError) as refused:
            bhyve_argv(bad, console="/dev/nmdm0A")
        assert refused.value.field == "disks[0].path"
        return
    argv = bhyve_argv(bad, console="/dev/nmdm0A")
    assert len(argv) == len(bhyve_argv(spec(), console="/dev/nmdm0A"))
    assert f"2,virtio-blk,{hostile}" in argv


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_console_or_checkpoint_path_is_refused_or_stays_one(hostile: str) -> None:
    refused = "," in hostile or "\n" in hostile
    for kwargs in ({"console": hostile}, {"console": "/c", "restore_from": Path(hostile)}):
        if refused:
            with pytest.raises(UserInputError):
                bhyve_argv(spec(), **kwargs)
        else:
            argv = bhyve_argv(spec(), **kwargs)
            assert f"com1,{kwargs['console']}" in argv
