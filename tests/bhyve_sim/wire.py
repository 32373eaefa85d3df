"""The simulated migration stream: frames of a JSON header (4-byte length first) and an
optional payload whose size the header names (`len`)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

DEFAULT_PORT = 24983


class StreamClosed(Exception):
    pass


def send(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps({**header, "len": len(payload)}).encode()
    sock.sendall(struct.pack(">I", len(head)) + head + payload)


def _exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise StreamClosed("the migration stream closed early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack(">I", _exact(sock, 4))
    header: dict[str, Any] = json.loads(_exact(sock, size))
    return header, _exact(sock, int(header.get("len", 0)))


def parse_host_port(value: str) -> tuple[str, int]:
    """`HOST[,PORT]` as bhyve -R and bhyvectl --migrate take it."""
    host, _, port = value.partition(",")
    if not host or (port and not port.isdigit()):
        raise ValueError(value)
    return host, int(port) if port else DEFAULT_PORT
