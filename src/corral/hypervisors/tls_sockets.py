"""TLS contexts for the streams the agents relay themselves (QEMU's migration stream in
qemu/tls_relay.py, bhyve's in bhyve/relay.py): the cluster CA, this node's certificate, the
peer's required and checked. Reads the layout tls_files.py writes.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any


def tls_context(tls_dir: Path, endpoint: str) -> ssl.SSLContext:
    """`endpoint` "server" (the destination) or "client" (the source): this node's
    certificate, the cluster CA as the only trust, the peer's certificate required (a client
    also checks the server's name or address: `server_hostname` when wrapping)."""
    server = endpoint == "server"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls_dir / f"{endpoint}-cert.pem", tls_dir / f"{endpoint}-key.pem")
    ctx.load_verify_locations(tls_dir / "ca-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_common_name(conn: ssl.SSLSocket) -> str | None:
    """The CN of the peer's (verified) certificate: the node's name in the cluster."""
    cert: Any = conn.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return None
