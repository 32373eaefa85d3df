"""Calling a lab node's API as a given certificate holder would: HTTPS from inside a node's
namespace with that node's (or nobody's) certificate, and the tables of a node's database,
to compare before and after a refused request."""

from __future__ import annotations

import http.client
import json
import sqlite3
import ssl
from dataclasses import dataclass
from typing import Any

from corral.cluster.pki import PkiPaths
from corral.lab import netns
from corral.lab.plan import LabNode, LabPlan

API_PORT = 4710
JOIN_PORT = 4711
# What a refused request must not change; heartbeat columns (last_seen, facts) move anyway.
TABLES = {
    "nodes": "SELECT name, address, port, fingerprint, holds_ca, draining FROM nodes",
    "vms": "SELECT name, owner, spec, state FROM vms",
    "tasks": "SELECT id, kind, args, owner, state FROM tasks",
    "join_tokens": "SELECT id, used_at, used_by FROM join_tokens",
    "revoked_certs": "SELECT fingerprint FROM revoked_certs",
    "cluster_meta": "SELECT key, value FROM cluster_meta",
}


def pki_of(node: LabNode) -> PkiPaths:
    return PkiPaths(node.local_dir / "state" / "pki")


def tables(node: LabNode) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of `node`'s database that a refused request must leave as they were."""
    db = sqlite3.connect(node.local_dir / "state" / "corral.db")
    try:
        return {name: sorted(map(tuple, db.execute(sql))) for name, sql in TABLES.items()}
    finally:
        db.close()


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message", ""))
        return str(self.body)


class _NsConnection(http.client.HTTPSConnection):
    def __init__(
        self, ns: str, host: str, port: int, ctx: ssl.SSLContext, name: str, source: str | None
    ) -> None:
        super().__init__(host, port, context=ctx, timeout=30)
        self._ns, self._ctx, self._name, self._source = ns, ctx, name, source

    def connect(self) -> None:
        raw = netns.connect_in(self._ns, self.host, self.port, timeout=30, source=self._source)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self._name)


def tls_context(plan: LabPlan, cert_of: PkiPaths | None) -> ssl.SSLContext:
    """Trusts the lab's CA; presents `cert_of`'s node certificate when given."""
    ctx = ssl.create_default_context(cafile=str(pki_of(plan.nodes[0]).ca_cert))
    if cert_of is not None:
        ctx.load_cert_chain(str(cert_of.node_cert), str(cert_of.node_key))
    return ctx


def call(
    plan: LabPlan,
    *,
    origin: LabNode,
    target: LabNode,
    method: str,
    path: str,
    cert_of: PkiPaths | None,
    body: Any = None,
    raw_body: bytes | None = None,
    headers: dict[str, str] | None = None,
    port: int = API_PORT,
    server_name: str | None = None,
    source: str | None = None,
) -> Answer:
    """One request from `origin`'s namespace to `target`'s API (or join port) presenting
    `cert_of`'s certificate; the server must present `server_name`'s (default: its IP)."""
    address = str(target.migration_address.ip)
    conn = _NsConnection(
        origin.netns, address, port, tls_context(plan, cert_of), server_name or address, source
    )
    data = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    sent = {"content-type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = text.decode(errors="replace")
    return Answer(response.status, decoded)
