"""The VM spec refuses what cannot run or migrate, naming the field."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from corral.model import CpuSpec, CpuTopology, VmSpec, generate_mac, is_valid_name


def test_topology_must_multiply_to_the_vcpu_count() -> None:
    with pytest.raises(ValidationError, match=r"2 sockets x 2 cores x 1 threads = 4 vCPUs"):
        CpuSpec(count=3, topology=CpuTopology(sockets=2, cores=2, threads=1))
    ok = CpuSpec(count=4, topology=CpuTopology(sockets=2, cores=1, threads=2))
    assert ok.effective_topology.vcpus == 4


def test_without_topology_all_vcpus_are_cores_of_one_socket() -> None:
    assert CpuSpec(count=3).effective_topology == CpuTopology(sockets=1, cores=3, threads=1)


@pytest.mark.parametrize("model", ["host", "max"])
def test_host_cpu_models_are_refused_because_they_cannot_migrate(model: str) -> None:
    with pytest.raises(ValidationError, match="cannot migrate"):
        CpuSpec(model=model)


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "has space", "x" * 64, "ünï", "-lead"])
def test_bad_vm_names_are_refused(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(ValidationError, match="name"):
        VmSpec(name=name)


def test_good_names_and_defaults() -> None:
    spec = VmSpec(name="web-1.prod_a")
    assert spec.memory_mib == 256
    assert spec.cpu.model == "qemu64"


@pytest.mark.parametrize("memory", [0, -1, 10**12])
def test_memory_out_of_range_is_refused(memory: int) -> None:
    with pytest.raises(ValidationError, match="memory_mib"):
        VmSpec(name="vm", memory_mib=memory)


def test_unknown_fields_are_errors_not_ignored() -> None:
    with pytest.raises(ValidationError, match="memroy"):
        VmSpec.model_validate({"name": "vm", "memroy": 5})


def test_generated_macs_are_locally_administered_and_stable_per_seed() -> None:
    mac = generate_mac(random.Random(1))
    assert mac.startswith("52:54:00:")
    assert mac == generate_mac(random.Random(1))
