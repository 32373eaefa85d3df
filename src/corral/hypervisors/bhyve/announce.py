"""Announcing a migrated guest's MACs from the destination, like QEMU's announce-self: one
gratuitous RARP per NIC, in a few rounds, so that the switches learn the guest's new port at
once instead of when the guest next sends a frame.

The frame is QEMU's (net/announce.c, announce_self_create): broadcast destination, the
guest's MAC as the source, ethertype RARP (0x8035), opcode 3 (reverse request), the MAC as
sender and target hardware address, zero protocol addresses, padded to 60 bytes. The rounds
follow QEMU's announce defaults (announce-initial 50 ms, announce-step 100 ms,
announce-rounds 5): at 0, 50, 150, 250 and 350 ms after the switchover.

How a frame leaves:
- FreeBSD: written to bpf(4) bound to the NIC's tap (BIOCSETIF) with the header complete
  (BIOCSHDRCMPLT, so the guest's MAC stays the source). A write on a bridge member goes
  through ether_output, which hands it to if_bridge (sys/net/if_ethersubr.c: "Bridges
  require special output handling", BRIDGE_OUTPUT), and the bridge floods a broadcast out of
  every member, the uplink included.
- Linux (where only the bhyve simulator runs, in the tests): an AF_PACKET raw socket on the
  bridge the tap is in, which floods a locally sent broadcast the same way. bpf(4) does not
  exist there; this branch is unreachable on a FreeBSD kernel.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ETH_P_RARP = 0x8035
ARP_HTYPE_ETH = 1
ARP_PTYPE_IP = 0x0800
ARP_OP_REQUEST_REV = 3
FRAME_BYTES = 60  # Ethernet's minimum, without the FCS
ROUNDS_MS = (0, 50, 150, 250, 350)

# sys/net/bpf.h with sys/sys/ioccom.h's _IOW (IOC_IN | (len & 0x1fff) << 16 | group << 8 | num)
# on amd64: BIOCSETIF is _IOW('B', 108, struct ifreq), sizeof(struct ifreq) == 32;
# BIOCSHDRCMPLT is _IOW('B', 117, u_int).
IOC_IN = 0x80000000
IFREQ_BYTES = 32
IFNAMSIZ = 16


def _iow(group: str, number: int, length: int) -> int:
    return IOC_IN | ((length & 0x1FFF) << 16) | (ord(group) << 8) | number


BIOCSETIF = _iow("B", 108, IFREQ_BYTES)
BIOCSHDRCMPLT = _iow("B", 117, 4)


@dataclass(frozen=True)
class Nic:
    """A NIC to announce: its tap (FreeBSD), the bridge it is in (Linux) and its MAC."""

    device: str
    bridge: str
    mac: str

    def to_arg(self) -> str:
        return f"{self.device},{self.bridge},{self.mac}"

    @classmethod
    def from_arg(cls, text: str) -> Nic:
        device, bridge, mac = text.split(",")
        return cls(device, bridge, mac)


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def rarp_frame(mac: str) -> bytes:
    """The gratuitous RARP that announces `mac`."""
    own = mac_bytes(mac)
    frame = b"\xff" * 6 + own + struct.pack("!H", ETH_P_RARP)
    frame += struct.pack("!HHBBH", ARP_HTYPE_ETH, ARP_PTYPE_IP, 6, 4, ARP_OP_REQUEST_REV)
    frame += own + bytes(4) + own + bytes(4)
    return frame.ljust(FRAME_BYTES, b"\0")


def ifreq(name: str) -> bytes:
    """struct ifreq with only ifr_name set (what BIOCSETIF reads)."""
    encoded = name.encode()
    if len(encoded) >= IFNAMSIZ:
        raise ValueError(f"interface name too long: {name!r}")
    return encoded.ljust(IFREQ_BYTES, b"\0")


def send_bpf(nic: Nic, frame: bytes, bpf: str = "/dev/bpf") -> None:
    """FreeBSD: write `frame` out of the NIC's tap through bpf(4)."""
    fd = os.open(bpf, os.O_RDWR)
    try:
        fcntl.ioctl(fd, BIOCSETIF, ifreq(nic.device))
        fcntl.ioctl(fd, BIOCSHDRCMPLT, struct.pack("I", 1))
        os.write(fd, frame)
    finally:
        os.close(fd)


def send_packet(nic: Nic, frame: bytes) -> None:
    """Linux: send `frame` on the NIC's bridge with a raw AF_PACKET socket."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_RARP)) as raw:
        raw.bind((nic.bridge, 0))
        raw.send(frame)


def default_sender() -> Callable[[Nic, bytes], None]:
    return send_bpf if sys.platform.startswith("freebsd") else send_packet


def announce(
    nics: Sequence[Nic],
    send: Callable[[Nic, bytes], None] | None = None,
    rounds_ms: Sequence[int] = ROUNDS_MS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Send every NIC's RARP in each round; returns what failed (the guest runs anyway)."""
    sender = send or default_sender()
    failed: list[str] = []
    start = time.monotonic()
    for at in rounds_ms:
        sleep(max(0.0, start + at / 1000 - time.monotonic()))
        for nic in nics:
            try:
                sender(nic, rarp_frame(nic.mac))
            except OSError as exc:
                failed.append(f"{nic.device} ({nic.mac}): {exc}")
    return failed
