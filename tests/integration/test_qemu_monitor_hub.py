"""The kept status-monitor connections (hypervisors/qemu/monitor_hub.py) on a real QEMU:
queries from many threads share them, QEMU's events wake a waiter at once, a QEMU started
again at the same socket is reached without anyone reconnecting by hand, and the host's
view of the guest's touched RAM is read from QEMU's own mapping."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.hypervisors.base import RunState, RuntimeStatus, VmLayout
from corral.hypervisors.qemu.driver import QemuDriver
from corral.hypervisors.qemu.monitor_hub import HUB
from corral.lab.image import GuestImage, guest_cmdline
from corral.model import VmSpec
from corral.waiting import wait_for

pytestmark = pytest.mark.qemu
MEMORY_MIB = 96


class Vm:
    def __init__(self, root: Path, image: GuestImage) -> None:
        self.driver = QemuDriver("tcg")
        self.layout = VmLayout(root / "run", root / "checkpoints")
        self.spec = VmSpec.model_validate(
            {
                "name": "hub",
                "memory_mib": MEMORY_MIB,
                "boot": {
                    "kernel": str(image.kernel),
                    "initrd": str(image.initrd),
                    "cmdline": guest_cmdline(),
                },
            }
        )

    def start(self) -> int:
        status = self.driver.start(self.spec, self.layout)
        assert status.pid is not None
        return status.pid


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, guest_image: GuestImage) -> Iterator[Vm]:
    subject = Vm(tmp_path_factory.mktemp("hub"), guest_image)
    subject.driver.define(subject.spec)
    subject.start()
    try:
        yield subject
    finally:
        subject.driver.kill(subject.layout)
        subject.driver.undefine(subject.spec, subject.layout, delete_disks=True)


def test_queries_from_many_threads_share_the_kept_connection(vm: Vm) -> None:
    def ask(_: int) -> str:
        return str(HUB.query(vm.layout.status_socket, "query-status")["status"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(64)))
    assert set(answers) == {"running"}


def test_an_event_wakes_the_waiter_and_no_event_is_a_timeout(vm: Vm) -> None:
    sock = vm.layout.status_socket
    HUB.query(sock, "query-status")
    assert HUB.wait_event(sock, 0.2) is False  # a running idle guest: no event
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(HUB.wait_event(sock, 60)))
    waiter.start()
    vm.driver.pause(vm.layout)  # `stop` on the control monitor: QEMU sends STOP
    waiter.join(timeout=90)
    assert woke == [True]
    assert vm.driver.status(vm.layout).state == RunState.PAUSED
    vm.driver.resume(vm.layout)
    assert vm.driver.status(vm.layout).state == RunState.RUNNING


def test_a_qemu_started_again_at_the_same_socket_is_reached(vm: Vm) -> None:
    before = vm.driver.status(vm.layout)
    vm.driver.kill(vm.layout)
    assert vm.driver.status(vm.layout).state == RunState.STOPPED
    pid = vm.start()
    assert pid != before.pid

    def running() -> RuntimeStatus | None:
        status = vm.driver.status(vm.layout)
        return status if status.state == RunState.RUNNING else None

    again = wait_for(running, timeout=60, what="the new QEMU to answer on the same socket")
    assert again.pid == pid


def test_the_guests_touched_ram_is_read_from_qemus_mapping(vm: Vm) -> None:
    ram = MEMORY_MIB * 1024 * 1024
    # Just started, the guest has touched nothing yet (the firmware loads the kernel): wait
    # until it booted far enough to have touched some.
    touched = wait_for(
        lambda: vm.driver.resident_guest_bytes(vm.layout, ram) or None,
        timeout=120,
        what="the guest to touch its RAM",
    )
    assert 0 < touched <= ram  # some of it, never more than all of it
    assert vm.driver.resident_guest_bytes(vm.layout, 2 * ram) is None  # no such mapping
