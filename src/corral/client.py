"""The client of an agent's API, for the CLI, the lab and other programs: over the local
agent's unix socket, or over HTTPS with the cluster's mutual TLS. `node` routes a request
through the agent to another member of its cluster.

Must never import: agent, cli, lab, or the layers below (it speaks HTTP only).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from corral.api_errors import Unreachable, raise_for_response
from corral.errors import WaitTimeout

T = TypeVar("T")

NODE_HEADER = "x-corral-node"
DEFAULT_SOCKET = Path("/run/corral/agent.sock")


class AgentClient:
    """Calls one agent's /v1 API."""

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
        headers = {NODE_HEADER: node} if node else {}
        self.extensions: dict[str, Any] = {"sni_hostname": server_name} if server_name else {}
        self.timeout = timeout
        self._owns_http = True
        if socket_path is not None:
            self.where = str(socket_path)
            # No TLS on a unix socket: without verify=False the transport would load the
            # system's CA bundle anyway (30-60 ms at every CLI start).
            transport = httpx.HTTPTransport(uds=str(socket_path), verify=False)
            self.http = httpx.Client(
                transport=transport,
                base_url="http://corral-agent",
                headers=headers,
                timeout=timeout,
            )
        elif url is not None:
            self.where = url
            self.http = httpx.Client(
                base_url=url, verify=ssl_context or True, headers=headers, timeout=timeout
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
        try:
            response = self.http.request(
                method,
                f"/v1{path}",
                json=json,
                params=params,
                timeout=timeout or self.timeout,
                extensions=self.extensions,
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"no agent answered at {self.where}: {exc}") from exc
        except RuntimeError as exc:  # httpx: a pooled client closed meanwhile (a removed peer)
            raise Unreachable(f"the connection to {self.where} was closed: {exc}") from exc
        raise_for_response(response)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

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
        try:
            with self.http.stream(
                "GET",
                f"/v1{path}",
                params=params,
                headers={"accept": "text/event-stream"},
                # The route sends a keep-alive line every few seconds.
                timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 30.0)),
                extensions=self.extensions,
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_response(response)
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:])
                    if time.monotonic() > deadline:
                        raise WaitTimeout(f"{path} still streams after {timeout:g}s")
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
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
