"""HTTP over the local agent's unix socket with the standard library only: what the CLI
uses, so a `corral` command does not import httpx (and its TLS stack) to talk to a socket
on the same machine. One connection per request (a unix socket connects in microseconds).

Must never import: agent, cli, lab, or the layers below (it speaks HTTP only).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to a unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("corral-agent", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    content_type: str
    body: bytes


def request(
    path: Path,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float,
) -> Answer:
    """One request and its whole answer.

    :raise OSError: the socket is missing, refused or timed out.
    :raise http.client.HTTPException: the agent's answer was cut short.
    """
    conn = UnixConnection(path, timeout)
    try:
        conn.request(method, url, body=body, headers=headers)
        response = conn.getresponse()
        return Answer(
            response.status,
            response.reason,
            response.getheader("content-type", ""),
            response.read(),
        )
    finally:
        conn.close()


@contextmanager
def stream(
    path: Path, url: str, *, headers: dict[str, str], timeout: float
) -> Iterator[tuple[Answer, Iterator[str]]]:
    """A streamed GET: the answer's head (with the whole body if it is an error) and its
    lines as they arrive.

    :raise OSError: the socket is missing, refused, or no line came within `timeout`.
    :raise http.client.HTTPException: the stream was cut short.
    """
    conn = UnixConnection(path, timeout)
    try:
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        head = Answer(
            response.status,
            response.reason,
            response.getheader("content-type", ""),
            response.read() if response.status >= 400 else b"",
        )

        def lines() -> Iterator[str]:
            while raw := response.readline():
                yield raw.decode(errors="replace").rstrip("\r\n")

        yield head, lines()
    finally:
        conn.close()
