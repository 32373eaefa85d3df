"""The client of an agent's API, for the CLI, the lab and other programs: over the local
agent's unix socket, or over HTTPS with the cluster's mutual TLS. `node` routes a request
through the agent to another member of its cluster.

Must never import: agent, cli, lab, or the layers below (it speaks HTTP only).
"""

from __future__ import annotations

import json as jsonlib
import ssl
import time
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from corral import unix_http
from corral.api_errors import Unreachable, raise_for_answer
from corral.errors import WaitTimeout

T = TypeVar("T")

NODE_HEADER = "x-corral-node"
DEFAULT_SOCKET = Path("/run/corral/agent.sock")

KEEPALIVE_S = 60.0  # how long an idle connection to a peer is kept


class AgentClient:
    """Calls one agent's /v1 API: over its unix socket with the standard library (the CLI
    imports no HTTP library), or over HTTPS with httpx (peers, with mutual TLS)."""

    def __init__(
        self,
        *,
        socket_path: Path | None = None,
        url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        node: str | None = None,
        timeout: float = 30.0,
        server_name: str | None = None,
    ) -> None:
        """`server_name`: the name the server's certificate must carry (a member's node
        name), checked instead of the address dialled."""
        self.headers = {NODE_HEADER: node} if node else {}
        self.extensions: dict[str, Any] = {"sni_hostname": server_name} if server_name else {}
        self.timeout = timeout
        self._owns_http = True
        self.socket_path = socket_path
        if socket_path is not None:
            self.where = str(socket_path)
        elif url is not None:
            import httpx  # only programs that reach peers load it

            self.where = url
            self.http = httpx.Client(
                base_url=url,
                verify=ssl_context or True,
                headers=self.headers,
                timeout=timeout,
                # Kept open between heartbeats that reach a peer every few intervals (no new
                # TLS handshake each time); shorter than the agent's keep-alive (server.py).
                limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S),
            )
        else:
            raise ValueError("an AgentClient needs a socket path or a URL")

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The decoded JSON answer to one call.

        :raise Unreachable: no agent answered.
        :raise CorralError: the agent answered with an error (same type as on the agent).
        """
        if self.socket_path is not None:
            answer = self._unix_request(method, path, json, params, timeout or self.timeout)
        else:
            answer = self._https_request(method, path, json, params, timeout or self.timeout)
        raise_for_answer(answer.status, answer.body, answer.reason)
        if not answer.body:  # an empty text (a console with nothing yet) is still a text
            return "" if answer.content_type.startswith("text/") else None
        if answer.content_type.startswith("application/json"):
            return jsonlib.loads(answer.body)
        return answer.body.decode(errors="replace")

    def _url(self, path: str, params: dict[str, Any] | None) -> str:
        query = urlencode(params, doseq=True) if params else ""
        return f"/v1{path}" + (f"?{query}" if query else "")

    def _unix_request(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        timeout: float,
    ) -> unix_http.Answer:
        assert self.socket_path is not None
        headers = dict(self.headers)
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["content-type"] = "application/json"
        try:
            return unix_http.request(
                self.socket_path,
                method,
                self._url(path, params),
                body=body,
                headers=headers,
                timeout=timeout,
            )
        except (OSError, HTTPException) as exc:
            raise Unreachable(f"no agent answered at {self.where}: {exc}") from exc

    def _https_request(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        timeout: float,
    ) -> unix_http.Answer:
        import httpx

        try:
            response = self.http.request(
                method,
                f"/v1{path}",
                json=json,
                params=params,
                timeout=timeout,
                extensions=self.extensions,
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"no agent answered at {self.where}: {exc}") from exc
        except RuntimeError as exc:  # httpx: a pooled client closed meanwhile (a removed peer)
            raise Unreachable(f"the connection to {self.where} was closed: {exc}") from exc
        return unix_http.Answer(
            response.status_code,
            response.reason_phrase,
            response.headers.get("content-type", ""),
            response.content,
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, timeout=timeout)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def stream(
        self, path: str, *, timeout: float, params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The records a streaming route sends (server-sent events: each `data:` line is one
        JSON record), as they come, until the route ends the stream.

        :raise Unreachable: no agent answered, or the stream broke.
        :raise WaitTimeout: still streaming after `timeout` seconds.
        :raise CorralError: the agent answered with an error.
        """
        deadline = time.monotonic() + timeout
        for line in self._lines(path, params):
            if line.startswith("data:"):
                yield jsonlib.loads(line[5:])
            if time.monotonic() > deadline:
                raise WaitTimeout(f"{path} still streams after {timeout:g}s")

    def _lines(self, path: str, params: dict[str, Any] | None) -> Iterator[str]:
        # The route sends a keep-alive line every few seconds: a read waits that long.
        read_timeout = max(self.timeout, 30.0)
        headers = {**self.headers, "accept": "text/event-stream"}
        if self.socket_path is not None:
            try:
                with unix_http.stream(
                    self.socket_path, self._url(path, params), headers=headers, timeout=read_timeout
                ) as (head, lines):
                    raise_for_answer(head.status, head.body, head.reason)
                    yield from lines
            except (OSError, HTTPException) as exc:
                raise Unreachable(f"the stream from {self.where} broke: {exc}") from exc
            return
        import httpx

        try:
            with self.http.stream(
                "GET",
                f"/v1{path}",
                params=params,
                headers={"accept": "text/event-stream"},
                timeout=httpx.Timeout(self.timeout, read=read_timeout),
                extensions=self.extensions,
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_answer(response.status_code, response.content, response.reason_phrase)
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise Unreachable(f"the stream from {self.where} broke: {exc}") from exc
        except RuntimeError as exc:  # httpx: a pooled client closed meanwhile
            raise Unreachable(f"the connection to {self.where} was closed: {exc}") from exc

    def follow_task(
        self,
        task_id: str,
        until: Callable[[dict[str, Any]], T | None],
        *,
        timeout: float,
        phase: str | None = None,
    ) -> T:
        """Follow task `task_id` as it changes until `until(task)` says something (not None);
        `phase`: the stream may end at that progress phase.

        :raise WaitTimeout: `until` said nothing within `timeout` seconds.
        """
        params = {"phase": phase} if phase else None
        for task in self.stream(f"/tasks/{task_id}/watch", timeout=timeout, params=params):
            found = until(task)
            if found is not None:
                return found
        raise WaitTimeout(f"task {task_id} ended without what was awaited")

    def view(self, timeout: float) -> AgentClient:
        """This client's connections, with another default timeout; closing the view
        leaves them open (a pooled client of a peer is shared by every caller)."""
        other = object.__new__(AgentClient)
        other.__dict__.update(self.__dict__)
        other.timeout = timeout
        other._owns_http = False
        return other

    def close(self) -> None:
        if self._owns_http and self.socket_path is None:
            self.http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
