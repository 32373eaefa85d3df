"""The announcement after a bhyve migration: QEMU's RARP frame, FreeBSD's bpf(4) request
numbers, and QEMU's rounds. (bpf(4) itself cannot run here: the lab test sends the same
frames through a raw socket on the simulated host's bridge.)"""

from __future__ import annotations

import struct

import pytest

from corral.hypervisors.bhyve import announce
from corral.hypervisors.bhyve.announce import Nic


def test_the_frame_is_a_broadcast_rarp_from_the_guests_mac() -> None:
    frame = announce.rarp_frame("52:54:00:12:34:56")
    mac = bytes.fromhex("525400123456")
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6
    assert frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == 0x8035
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)
    assert frame[22:28] == mac  # sender hardware address
    assert frame[28:32] == bytes(4)
    assert frame[32:38] == mac  # target hardware address
    assert frame[38:] == bytes(22)


def test_a_malformed_mac_is_refused() -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        announce.rarp_frame("52:54:00")


def test_bpf_requests_are_freebsds() -> None:
    # sys/net/bpf.h: _IOW('B', 108, struct ifreq) and _IOW('B', 117, u_int) on amd64.
    assert announce.BIOCSETIF == 0x8020426C
    assert announce.BIOCSHDRCMPLT == 0x80044275
    request = announce.ifreq("tap1234")
    assert len(request) == 32
    assert request.startswith(b"tap1234\0")
    with pytest.raises(ValueError, match="too long"):
        announce.ifreq("x" * 16)


def test_every_nic_in_each_of_qemus_rounds_and_failures_are_reported() -> None:
    sent: list[tuple[str, bytes]] = []
    waits: list[float] = []

    def sender(nic: Nic, frame: bytes) -> None:
        if nic.device == "tap2" and len([s for s in sent if s[0] == "tap2"]) == 0:
            sent.append(("tap2", frame))
            raise OSError("no buffer space")
        sent.append((nic.device, frame))

    nics = [Nic("tap1", "br0", "52:54:00:00:00:01"), Nic("tap2", "br1", "52:54:00:00:00:02")]
    failed = announce.announce(nics, sender, sleep=waits.append)
    assert [d for d, _ in sent] == ["tap1", "tap2"] * 5
    assert failed == ["tap2 (52:54:00:00:00:02): no buffer space"]
    assert len(waits) == 5
    assert sent[0][1] == announce.rarp_frame("52:54:00:00:00:01")


def test_a_nic_travels_as_one_argument() -> None:
    nic = Nic("tap1000", "br0", "52:54:00:aa:bb:cc")
    assert Nic.from_arg(nic.to_arg()) == nic
