"""What stands between the network and the API's handlers: the peer's certificate carried
from the TLS connection into each request, the mapping of that certificate to a current
member (403 otherwise, before any route runs), and a bound on request bodies (413).

Must never import: cli, lab.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from corral.agent.access import CALLER_KEY, Caller
from corral.client import NODE_HEADER
from corral.cluster.pki import der_fingerprint
from corral.cluster.registry import NodeRegistry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

PEER_CERT_KEY = "corral.peer_cert"  # the client certificate (DER) of the TLS connection
JOIN_BODY_LIMIT = 64 * 1024
API_BODY_LIMIT = 1024 * 1024


class PeerCertProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, passing the TLS client certificate of each connection to
    the application in the request's scope (uvicorn has no ASGI TLS extension)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        inner = self.app

        async def with_peer_cert(scope: Scope, receive: Receive, send: Send) -> None:
            scope[PEER_CERT_KEY] = cert
            await inner(scope, receive, send)

        self.app = with_peer_cert


async def _refuse(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "message": message, "field": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class IdentifyMembers:
    """Requests over mutual TLS: the client certificate must be a current member's (by its
    fingerprint, as recorded at the join); anything else gets 403 before any route runs."""

    def __init__(self, app: Asgi, registry: NodeRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app, registry = self.app, self.registry
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        cert = scope.get(PEER_CERT_KEY)
        member = None
        if isinstance(cert, bytes):
            fingerprint = der_fingerprint(cert)
            # Memory, after one small read (no thread hop): every heartbeat comes this way.
            member = registry.member_by_fingerprint(fingerprint)
        if member is None:
            await _refuse(
                send,
                403,
                "AccessDenied",
                "this certificate is not a current member's (removed, or never admitted)",
            )
            return
        scope[CALLER_KEY] = Caller("peer", member[0], member[1])
        await app(scope, receive, send)


class FixedCaller:
    """Every request of this server comes from the same kind of caller: root on this node
    (the unix socket), or anyone (the join port, where only the token says who)."""

    def __init__(self, app: Asgi, caller: Caller) -> None:
        self.app = app
        self.caller = caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[CALLER_KEY] = self.caller
        await self.app(scope, receive, send)


class LimitBody:
    """413 for a body over `limit` bytes: by its Content-Length before anything is read, or
    as soon as a streamed body passes the limit. A body within the limit is read here and
    handed on whole (limits are small), so no handler ever sees part of one."""

    def __init__(self, app: Asgi, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app, limit = self.app, self.limit
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        too_big = f"the request body is larger than {limit} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await _refuse(send, 413, "UserInputError", too_big)
                    return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _refuse(send, 413, "UserInputError", too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await app(scope, replay, send)


class ForwardToMember:
    """A request naming another member (the NODE_HEADER, set by `--node`) is answered by
    `forward` (the local CLI's only; app.py); every other request goes straight on. A plain
    ASGI layer: starlette's `BaseHTTPMiddleware` would cost every request, heartbeats
    included, a task group and two memory streams."""

    def __init__(
        self, app: Asgi, here: str, forward: Callable[[Request, str], Awaitable[Response]]
    ) -> None:
        self.app, self.here, self.forward = app, here, forward
        self._header = NODE_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == self._header), None
            )
            if target and target != self.here:
                response = await self.forward(Request(scope, receive), target)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
