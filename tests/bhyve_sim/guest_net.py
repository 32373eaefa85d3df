"""The simulated guest's network: bhyve's tap backend and just enough of an IPv4 stack.

bhyve opens a NIC's backend device (usr.sbin/bhyve/net_backends.c, tap_init: open of
/dev/tapN, "open of tap device ... failed" otherwise) and moves frames between it and the
guest's virtio-net. On Linux the same tap is reached through /dev/net/tun (TUNSETIFF on the
existing device, as created by the simulated ifconfig). The guest answers ARP requests for
its address and ICMP echo requests to it, and sends nothing on its own: so after a migration
only an announcement tells the switches where it went. It is silent while paused.

A guest's address comes from the simulated host's configuration, `guests: {VM: {"ip": ...}}`
(what the guest's own OS would be configured with); a guest without one answers nothing.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(device: str) -> int:
    """The tap's frames, as bhyve's /dev/tapN gives them. :raise OSError: no such tap."""
    if not Path("/sys/class/net", device).exists():
        raise FileNotFoundError(2, f"open of tap device /dev/{device} failed")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def reply_to(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    """The guest's answer to `frame`, if it asks for one."""
    if len(frame) < 14:
        return None
    dst, src, kind = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    if dst not in (mac, b"\xff" * 6):
        return None
    body = frame[14:]
    if kind == 0x0806 and len(body) >= 28:  # ARP
        op, sender_mac, sender_ip, target_ip = body[6:8], body[8:14], body[14:18], body[24:28]
        if op != b"\x00\x01" or target_ip != ip:
            return None
        arp = body[:6] + b"\x00\x02" + mac + ip + sender_mac + sender_ip
        return src + mac + frame[12:14] + arp
    if kind == 0x0800 and len(body) >= 28 and body[9] == 1 and body[16:20] == ip:  # ICMP
        header_len = (body[0] & 0x0F) * 4
        total = struct.unpack("!H", body[2:4])[0]
        icmp = body[header_len:total]
        if not icmp or icmp[0] != 8:
            return None
        echo = b"\x00\x00\x00\x00" + icmp[4:]
        echo = echo[:2] + struct.pack("!H", _checksum(echo)) + echo[4:]
        ip_header = bytearray(body[:header_len])
        ip_header[12:16], ip_header[16:20] = body[16:20], body[12:16]
        ip_header[8] = 64
        ip_header[10:12] = b"\0\0"
        ip_header[10:12] = struct.pack("!H", _checksum(bytes(ip_header)))
        return src + mac + frame[12:14] + bytes(ip_header) + echo
    return None


def serve(fd: int, mac: str, ip: str, running: Callable[[], bool]) -> threading.Thread:
    """Answer on the tap `fd` as the guest with `mac` and `ip`, while `running()`."""
    own_mac = bytes(int(p, 16) for p in mac.split(":"))
    own_ip = socket.inet_aton(ip)

    def loop() -> None:
        while True:
            frame = os.read(fd, 65536)
            if not running():
                continue  # a paused guest answers nothing
            answer = reply_to(frame, own_mac, own_ip)
            if answer is not None:
                os.write(fd, answer)

    thread = threading.Thread(target=loop, name=f"nic-{mac}", daemon=True)
    thread.start()
    return thread
