"""How an agent talks to another member: HTTPS with the cluster's mutual TLS, verified
against the cluster CA and against the member's name (its certificate's DNS name), not only
the address dialled: an address that presents another member's certificate is refused.

`PeerPool` keeps one keep-alive client per member, shared by every thread of the agent, so
a heartbeat, a forwarded request or a migration's poll reuses an open TLS connection
instead of paying a full handshake each time.
"""

from __future__ import annotations

import threading

from corral.client import AgentClient
from corral.cluster.pki import PkiPaths
from corral.cluster.registry import NodeRecord


def peer_client(pki: PkiPaths, node: NodeRecord, timeout: float = 10.0) -> AgentClient:
    """A new client of `node`'s API, authenticated with this node's certificate."""
    return AgentClient(
        url=f"https://{node.address}:{node.port}",
        ssl_context=pki.client_context(),
        timeout=timeout,
        server_name=node.name,
    )


class PeerPool:
    """One keep-alive client per member (its name, address and port, and this node's
    certificate files): a client made for other files or another address is replaced."""

    def __init__(self, pki: PkiPaths) -> None:
        self.pki = pki
        self._clients: dict[str, tuple[tuple[object, ...], AgentClient]] = {}
        self._lock = threading.Lock()

    def client(self, node: NodeRecord, timeout: float = 10.0) -> AgentClient:
        """A view of the pooled client of `node` with `timeout` as its default; closing
        the view keeps the connection for the next caller."""
        context = self.pki.client_context()  # rebuilt only when the files change
        key = (node.address, node.port, id(context))
        with self._lock:
            found = self._clients.get(node.name)
            if found is None or found[0] != key:
                if found is not None:
                    found[1].close()
                found = (key, peer_client(self.pki, node))
                self._clients[node.name] = found
        return found[1].view(timeout)

    def forget(self, keep: set[str]) -> None:
        """Close the clients of nodes no longer in `keep` (removed members)."""
        with self._lock:
            for name in set(self._clients) - keep:
                self._clients.pop(name)[1].close()

    def close(self) -> None:
        self.forget(set())
