"""bhyve host facts and the compatibility rule: bhyve cannot mask CPUID, so machine, CPU
model and features and page size must be identical; a host without vmm.ko or migration
support is a reason, never an attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.hypervisors.bhyve.driver import BhyveDriver
from corral.hypervisors.bhyve.facts import compatible, host_facts, parse_cpu, parse_usage, probe
from corral.hypervisors.bhyve.host import BhyveHost
from corral.hypervisors.qemu.driver import QemuDriver
from corral.model import VmSpec
from tests.bhyve_sim.host import SimHost, install

SPEC = VmSpec.model_validate({"name": "v", "memory_mib": 64})


def facts(host: SimHost) -> dict[str, Any]:
    return host_facts(probe(BhyveHost(host.root))).to_json()


@pytest.fixture
def hosts(tmp_path: Path) -> tuple[SimHost, SimHost]:
    return install(tmp_path / "a"), install(tmp_path / "b")


def test_parse_cpu_reads_vendor_and_every_feature_line() -> None:
    dmesg = (
        'CPU: Xeon\n  Origin="AuthenticAMD"  Id=0x1\n'
        "  Features=0x1<FPU,VME>\n  Features2=0x2<SSE3>\n  AMD Features=0x3<NX,LM>\n"
        "  Structured Extended Features=0x4<AVX2>\n"
    )
    assert parse_cpu(dmesg) == ("AuthenticAMD", ("avx2", "fpu", "lm", "nx", "sse3", "vme"))


def test_parse_usage_finds_what_bhyvectl_was_built_with() -> None:
    assert parse_usage("[--checkpoint=<f>]\n[--migrate=<h>]") == (True, True, False)
    assert parse_usage("[--destroy]") == (False, False, False)


def test_probe_reports_the_host(hosts: tuple[SimHost, SimHost]) -> None:
    found = facts(hosts[0])
    assert found["hypervisor"] == "bhyve"
    assert found["arch"] == "amd64"
    assert found["memory_total_mib"] == 8192
    assert "sse4.2" in found["cpu_flags"]
    assert found["extra"]["bhyve"] == {
        "machine": "amd64",
        "maxcpu": 2,
        "pagesize": 4096,
        "vmm": True,
        "snapshot": True,
        "migration": True,
        "live_migration": True,
    }


def test_identical_hosts_are_compatible(hosts: tuple[SimHost, SimHost]) -> None:
    assert compatible(SPEC, facts(hosts[0]), facts(hosts[1])) == []


def codes(hosts: tuple[SimHost, SimHost]) -> list[str]:
    return [code for code, _ in compatible(SPEC, facts(hosts[0]), facts(hosts[1]))]


def test_another_cpu_model_is_refused(hosts: tuple[SimHost, SimHost]) -> None:
    hosts[1].configure(sysctl={"hw.model": "AMD EPYC 7302"})
    assert codes(hosts) == ["cpu"]


def test_another_page_size_is_refused(hosts: tuple[SimHost, SimHost]) -> None:
    hosts[1].configure(sysctl={"hw.pagesize": "16384"})
    assert codes(hosts) == ["pagesize"]


def test_a_target_without_migration_or_vmm_is_refused(hosts: tuple[SimHost, SimHost]) -> None:
    hosts[1].configure(migration=False, kld=[])
    assert sorted(codes(hosts)) == ["bhyve-migration", "vmm"]


def test_a_qemu_target_is_refused(hosts: tuple[SimHost, SimHost]) -> None:
    qemu_like = {**facts(hosts[1]), "hypervisor": "qemu"}
    assert [c for c, _ in compatible(SPEC, facts(hosts[0]), qemu_like)] == ["hypervisor"]


def test_options_bhyve_lacks_are_refused_and_qemu_has_them() -> None:
    bhyve = BhyveDriver(BhyveHost(Path("/nonexistent")))
    assert [c for c, _ in bhyve.option_refusals(postcopy=True, channels=4)] == [
        "postcopy",
        "parallel",
    ]
    assert bhyve.option_refusals(postcopy=False, channels=1) == []
    assert QemuDriver().option_refusals(postcopy=True, channels=4) == []
