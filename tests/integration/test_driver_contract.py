"""The driver contract (hypervisors/base.py), the same tests for every driver: QEMU for real,
bhyve on the simulator (tests/bhyve_sim). One VM per driver for the module, in order:
facts, running, pause, checkpoint that runs on, restore, refusals, stop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.errors import ConflictError, CorralError
from corral.hypervisors.base import RunState, VmLayout
from corral.hypervisors.bhyve.driver import BhyveDriver
from corral.hypervisors.bhyve.host import BhyveHost
from corral.hypervisors.qemu.driver import QemuDriver
from corral.lab.guest import Counter, parse_counter
from corral.lab.image import GuestImage, guest_cmdline
from corral.model import VmSpec
from corral.waiting import wait_for
from tests.bhyve_sim.host import install

pytestmark = pytest.mark.qemu


@dataclass
class Subject:
    driver: QemuDriver | BhyveDriver
    spec: VmSpec
    layout: VmLayout

    def console(self, since: int = 0) -> list[str]:
        text = self.layout.console_log.read_bytes()[since:].decode(errors="replace")
        return [ln.split("\x1b")[-1].strip("\r") for ln in text.splitlines()]

    def counters(self, since: int = 0) -> list[Counter]:
        return [c for c in map(parse_counter, self.console(since)) if c is not None]

    def boots(self, since: int = 0) -> int:
        return sum("BOOTED" in ln for ln in self.console(since))

    def counting_past(self, seq: int, since: int = 0) -> Counter:
        def past() -> Counter | None:
            found = self.counters(since)
            return found[-1] if found and found[-1].seq > seq else None

        return wait_for(past, timeout=120, what=f"the guest to count past {seq}")

    def last(self) -> int:
        return self.counting_past(0).seq


def spec_for(kind: str, root: Path, image: GuestImage) -> dict[str, Any]:
    topology = {"count": 2, "topology": {"sockets": 1, "cores": 2, "threads": 1}}
    if kind == "qemu":
        return {
            "name": "contract",
            "memory_mib": 128,
            "cpu": topology,
            "disks": [{"path": str(root / "disk.qcow2"), "format": "qcow2", "size_mib": 16}],
            "boot": {
                "kernel": str(image.kernel),
                "initrd": str(image.initrd),
                "cmdline": guest_cmdline(),
            },
        }
    return {
        "name": "contract",
        "memory_mib": 64,
        "cpu": topology,
        "disks": [{"path": str(root / "disk.img"), "format": "raw", "size_mib": 16}],
    }


@pytest.fixture(scope="module", params=["qemu", "bhyve"])
def vm(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    guest_image: GuestImage,
) -> Iterator[Subject]:
    kind = str(request.param)
    root = tmp_path_factory.mktemp(f"contract-{kind}")
    driver: QemuDriver | BhyveDriver = (
        QemuDriver("tcg") if kind == "qemu" else BhyveDriver(BhyveHost(install(root / "host").root))
    )
    subject = Subject(
        driver,
        VmSpec.model_validate(spec_for(kind, root, guest_image)),
        VmLayout(root / "run", root / "checkpoints"),
    )
    driver.define(subject.spec)
    driver.start(subject.spec, subject.layout)
    try:
        yield subject
    finally:
        driver.kill(subject.layout)
        driver.undefine(subject.spec, subject.layout, delete_disks=True)


def test_facts_describe_the_host_and_a_host_is_compatible_with_itself(vm: Subject) -> None:
    facts = vm.driver.facts()
    assert facts.hypervisor == vm.driver.name
    assert facts.memory_total_mib > 0
    assert facts.arch
    same = facts.to_json()
    assert vm.driver.compatible(vm.spec, same, same) == []
    other = {**same, "hypervisor": "other"}
    assert [code for code, _ in vm.driver.compatible(vm.spec, same, other)] == ["hypervisor"]


def test_the_vm_runs_and_its_guest_counts(vm: Subject) -> None:
    first = vm.last()
    vm.counting_past(first + 2)
    assert vm.driver.status(vm.layout).state == RunState.RUNNING
    assert vm.boots() == 1


def test_pause_and_resume(vm: Subject) -> None:
    vm.driver.pause(vm.layout)
    assert vm.driver.status(vm.layout).state == RunState.PAUSED
    held = vm.last()
    vm.driver.resume(vm.layout)
    assert vm.driver.status(vm.layout).state == RunState.RUNNING
    vm.counting_past(held + 2)


def test_a_checkpoint_saves_the_vm_and_it_runs_on(vm: Subject) -> None:
    info = vm.driver.checkpoint(vm.spec, vm.layout, "c1", suspend=False)
    assert info.hypervisor == vm.driver.name
    assert info.vm == vm.spec.name
    assert len(info.disk_snapshots) == 1
    assert vm.driver.status(vm.layout).state == RunState.RUNNING
    vm.counting_past(vm.last() + 2)
    assert vm.boots() == 1
    assert [c.name for c in vm.driver.list_checkpoints(vm.layout)] == ["c1"]


def test_restore_brings_back_the_saved_state(vm: Subject) -> None:
    later = vm.counting_past(vm.last() + 3).seq
    mark = vm.layout.console_log.stat().st_size
    vm.driver.restore(vm.spec, vm.layout, "c1")
    assert vm.driver.status(vm.layout).state == RunState.RUNNING
    resumed = vm.counting_past(0, since=mark)
    assert resumed.seq < later  # back in time: the checkpoint's memory, not a reboot
    assert vm.boots(since=mark) == 0


def test_restore_refuses_a_checkpoint_of_another_spec(vm: Subject) -> None:
    bigger = vm.spec.model_copy(update={"memory_mib": vm.spec.memory_mib * 2})
    with pytest.raises(ConflictError):
        vm.driver.restore(bigger, vm.layout, "c1")
    assert vm.driver.status(vm.layout).state == RunState.RUNNING


def test_delete_a_checkpoint(vm: Subject) -> None:
    vm.driver.delete_checkpoint(vm.spec, vm.layout, "c1")
    assert vm.driver.list_checkpoints(vm.layout) == []
    with pytest.raises(CorralError):
        vm.driver.restore(vm.spec, vm.layout, "c1")


def test_kill_then_start_again_then_shut_down(vm: Subject) -> None:
    vm.driver.kill(vm.layout)
    assert vm.driver.status(vm.layout).state == RunState.STOPPED
    mark = vm.layout.console_log.stat().st_size
    vm.driver.start(vm.spec, vm.layout)
    wait_for(lambda: vm.boots(since=mark) == 1, timeout=120, what="a fresh boot")
    vm.driver.shutdown(vm.layout, timeout=10)
    assert vm.driver.status(vm.layout).state == RunState.STOPPED
