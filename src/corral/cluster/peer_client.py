"""How an agent talks to another member: HTTPS with the cluster's mutual TLS, verified
against the cluster CA and against the member's name (its certificate's DNS name), not only
the address dialled: an address that presents another member's certificate is refused."""

from __future__ import annotations

from corral.client import AgentClient
from corral.cluster.pki import PkiPaths
from corral.cluster.registry import NodeRecord


def peer_client(pki: PkiPaths, node: NodeRecord, timeout: float = 10.0) -> AgentClient:
    """A client of `node`'s API, authenticated with this node's certificate."""
    return AgentClient(
        url=f"https://{node.address}:{node.port}",
        ssl_context=pki.client_context(),
        timeout=timeout,
        server_name=node.name,
    )
