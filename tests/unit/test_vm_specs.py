"""From the spec a person writes to the spec a driver runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import UserInputError
from corral.vms.directories import NodeDirectories
from corral.vms.specs import load_request, resolve, tap_name

DIRS = NodeDirectories(Path("/s/data"), Path("/s/config"), Path("/s/system"), Path("/run/c"))

SPEC = """
name = "web1"
memory_mib = 512
[cpu]
count = 4
model = "Westmere"
[cpu.topology]
sockets = 2
cores = 2
threads = 1
[[disks]]
size_mib = 64
[[disks]]
path = "/images/base.qcow2"
[[nics]]
bridge = "br0"
[[nics]]
bridge = "br1"
mac = "52:54:00:12:34:56"
"""


def test_a_toml_spec_resolves_to_paths_macs_and_taps() -> None:
    spec = resolve(load_request(SPEC), DIRS)
    assert spec.cpu.effective_topology.vcpus == 4
    assert spec.disks[0].path == Path("/s/data/web1/disk0.qcow2")
    assert spec.disks[0].size_mib == 64
    assert spec.disks[1].path == Path("/images/base.qcow2")
    assert spec.disks[1].size_mib is None
    assert spec.nics[1].mac == "52:54:00:12:34:56"
    assert spec.nics[0].mac.startswith("52:54:00:")
    assert [n.tap for n in spec.nics] == [tap_name("web1", 0), tap_name("web1", 1)]


def test_tap_names_are_short_stable_and_distinct() -> None:
    names = {tap_name(f"vm{i}", j) for i in range(200) for j in range(2)}
    assert len(names) == 400
    assert all(len(n) <= 15 for n in names)
    assert tap_name("a" * 63, 7) == tap_name("a" * 63, 7)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name = [", "spec"),
        ('name = "../x"', "name"),
        ('name = "a"\nmemory_mib = 0', "memory_mib"),
        ('name = "a"\n[cpu]\ncount = 3\n[cpu.topology]\nsockets = 2', "cpu"),
        ('name = "a"\n[[disks]]\nsize_mib = 1\npath = "/x"', "disks.0"),
        ('name = "a"\n[[disks]]\npath = "relative.qcow2"', "disks.0.path"),
        ('name = "a"\n[[nics]]\nbridge = "a-bridge-name-too-long"', "nics.0.bridge"),
        ('name = "a"\ncolour = "red"', "colour"),
    ],
)
def test_bad_specs_name_their_field(text: str, field: str) -> None:
    with pytest.raises(UserInputError) as info:
        load_request(text)
    assert info.value.field == field
