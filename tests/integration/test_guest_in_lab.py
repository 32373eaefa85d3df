"""The test guest booted under QEMU (TCG) in a lab node: it answers ping from the client
namespace, streams its counter over TCP, prints it on its console, writes its disk
sequence without losing a write and dirties memory when asked. Booted once for the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lab import netns
from corral.lab.guest import Counter, LabGuest, parse_counter
from corral.lab.image import GuestImage
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig
from corral.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, guest_image: GuestImage) -> Iterator[LabGuest]:
    root = tmp_path_factory.mktemp("guestlab") / "lab"
    plan = lab_up(LabConfig(nodes=2, prefix="cguest", root=root))
    try:
        with LabGuest(
            plan,
            plan.node("node1"),
            guest_image,
            name="g1",
            host_number=21,
            disk_mib=16,
            dirty_mib=8,
        ) as booted:
            booted.wait_booted()
            yield booted
            qemu_pid = booted.process.pid if booted.process else None
    finally:
        lab_down(root)
    assert not set(plan.namespaces) & netns.existing_namespaces()
    assert qemu_pid is None or not Path(f"/proc/{qemu_pid}").exists()


def test_guest_answers_ping_from_the_client_namespace(guest: LabGuest) -> None:
    wait_for(guest.ping_from_client, timeout=60, what="the guest to answer ping")
    assert guest.ping_from_client(count=3)


def test_counter_stream_over_tcp_advances(guest: LabGuest) -> None:
    wait_for(guest.ping_from_client, timeout=60, what="the guest to answer ping")
    with guest.connect_counter() as conn:
        stream = conn.makefile("r")
        counters = [parse_counter(stream.readline()) for _ in range(5)]
    assert all(c is not None for c in counters)
    seqs = [c.seq for c in counters if c]
    uptimes = [c.uptime for c in counters if c]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert uptimes[-1] > uptimes[0]


def test_console_counter_advances(guest: LabGuest) -> None:
    first = wait_for(guest.last_counter, timeout=30, what="a counter line")

    def advanced() -> Counter | None:
        c = guest.last_counter()
        return c if c is not None and c.seq > first.seq + 3 else None

    later = wait_for(advanced, timeout=30, what="the counter to advance")
    assert later.uptime > first.uptime


def test_disk_sequence_advances_without_lost_writes(guest: LabGuest) -> None:
    def seq_reached(n: int) -> bool:
        return any(line.startswith(f"DISKSEQ {n}") for line in guest.console_lines())

    wait_for(lambda: seq_reached(40), timeout=120, what="40 disk writes")
    lines = guest.console_lines()
    assert any(line.endswith("DISKSTART 0") for line in lines)
    assert not [line for line in lines if line.startswith("DISKERR")]


def test_memory_is_being_dirtied(guest: LabGuest) -> None:
    wait_for(
        lambda: "DIRTYING 8 MiB" in guest.console_lines(), timeout=60, what="the dirtier to start"
    )
