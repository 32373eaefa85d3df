"""The CLI's client over a unix socket (standard library only) against a real HTTP server
on a real socket: JSON answers, errors turned back into corral's types, a chunked stream
of server-sent events read as it comes, and a missing agent named."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from corral.api_errors import Unreachable
from corral.client import NODE_HEADER, AgentClient
from corral.errors import ConflictError, NotFoundError, UserInputError


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # a unix socket has no (host, port)
        return "unix"

    def log_message(self, *_: object) -> None: ...

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/echo"):
            self._json(200, {"path": self.path, "node": self.headers.get(NODE_HEADER)})
        elif self.path == "/v1/tasks/t1/watch":
            assert "text/event-stream" in self.headers["accept"]
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            parts = [
                'event: task\ndata: {"n": 0}\n\n',
                ": keep-alive\n\n",
                'event: task\ndata: {"n": 1}\n\n',
            ]
            for part in parts:  # one chunk each, flushed: a stream, not one body
                chunk = part.encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/v1/console":  # a console with nothing in it yet
            self.send_response(200)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/v1/tasks/gone/watch":
            self._json(404, {"error": {"type": "NotFoundError", "message": "no task gone"}})
        else:
            self._json(404, {"error": {"type": "NotFoundError", "message": f"no {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        if body.get("kind") == "bad":
            self._json(422, {"detail": [{"loc": ["body", "kind"], "msg": "bad"}]})
        elif body.get("kind") == "held":
            error = {"type": "ConflictError", "message": "VM web1 is migrating", "exit_code": 4}
            self._json(409, {"error": error})
        else:
            self._json(201, {"got": body, "type": self.headers["content-type"]})


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "agent.sock"
    server = Server(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def test_answers_are_json_with_the_query_and_the_node_header(agent_socket: Path) -> None:
    with AgentClient(socket_path=agent_socket, node="node2") as client:
        got = client.get("/echo", state=["queued", "running"], limit=5, unset=None)
        assert got == {"path": "/v1/echo?state=queued&state=running&limit=5", "node": "node2"}
        assert client.get("/console") == ""  # an empty text, not None
        posted = client.post("/tasks", {"kind": "sleep"})
        assert posted == {"got": {"kind": "sleep"}, "type": "application/json"}


def test_errors_come_back_as_corrals_own_types(agent_socket: Path) -> None:
    client = AgentClient(socket_path=agent_socket)
    with pytest.raises(NotFoundError, match="no /v1/nothing"):
        client.get("/nothing")
    with pytest.raises(ConflictError, match="migrating") as held:
        client.post("/tasks", {"kind": "held"})
    assert held.value.exit_code == 4
    with pytest.raises(UserInputError):  # FastAPI's own validation answer
        client.post("/tasks", {"kind": "bad"})


def test_a_stream_gives_each_record_as_it_comes_and_skips_keep_alives(
    agent_socket: Path,
) -> None:
    client = AgentClient(socket_path=agent_socket)
    assert list(client.stream("/tasks/t1/watch", timeout=30)) == [{"n": 0}, {"n": 1}]
    assert client.follow_task("t1", lambda t: t["n"] if t["n"] == 1 else None, timeout=30) == 1
    with pytest.raises(NotFoundError, match="no task gone"):
        list(client.stream("/tasks/gone/watch", timeout=30))


def test_no_agent_at_the_socket_is_unreachable_and_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    with pytest.raises(Unreachable, match=str(missing)):
        AgentClient(socket_path=missing).get("/health")
    with pytest.raises(Unreachable, match=str(missing)):
        list(AgentClient(socket_path=missing).stream("/tasks/t1/watch", timeout=5))
