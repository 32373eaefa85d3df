"""The cluster's agreed state in etcd (`agent --state etcd`): a client of etcd's v3 JSON
gateway (the maintained `etcd3gw` library) over mutual TLS with the node's own cluster
certificate, trying each endpoint in turn.

What lives in etcd, under `/corral/<cluster>/` (everything else stays in each node's SQLite):

    members/<node>   the node's live numbers and facts version, attached to its lease
    facts/<node>     the node's whole facts (written when their version changes)
    vms/<vm>         the name of the node that owns (may run) the VM, attached to that
                     node's lease

Every read is linearizable (etcd's default): it needs a majority of etcd's members, so a
node cut off from the majority learns it at once (`StateUnavailable`) instead of reading a
stale answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from corral.cluster.etcd_endpoints import parse_endpoints
from corral.errors import ConflictError

__all__ = ["Entry", "EtcdStore", "StateUnavailable", "parse_endpoints"]

REQUEST_TIMEOUT = 2.0  # one request to one endpoint
RETRY_FOR = 1.5  # every endpoint failed: try them again for this long (an election)
RETRY_PAUSE = 0.25


class StateUnavailable(ConflictError):
    """No etcd endpoint answered with a majority behind it."""


@dataclass(frozen=True)
class Entry:
    """One key as etcd holds it."""

    key: str
    value: str
    lease: int
    mod_revision: int


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The first key after every key starting with `prefix` (etcd's range end)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdStore:
    """etcd, as this node reaches it: endpoints tried in turn, the last good one first."""

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        ca: Path,
        cert: Path,
        key: Path,
        cluster: str,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.root = f"/corral/{cluster}/"
        self._clients = [
            Etcd3Client(
                host=host,
                port=port,
                protocol="https",
                timeout=timeout,
                api_path="/v3/",  # etcd 3.4 and later
                session=_session(ca, cert, key),
            )
            for host, port in endpoints
        ]
        self._first = 0
        self._lock = threading.Lock()

    # -- transport -------------------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` of the v3 gateway on the first endpoint that answers.

        :raise StateUnavailable: none answered (down, or without a leader).
        """
        deadline = time.monotonic() + RETRY_FOR
        while True:
            with self._lock:
                first = self._first
            errors: list[str] = []
            n = len(self._clients)
            for i in range(n):
                index = (first + i) % n
                client = self._clients[index]
                try:
                    answer = client.post(client.get_url(path), json=body)
                except (Etcd3Exception, requests.RequestException, OSError, ValueError) as exc:
                    errors.append(f"{client.host}:{client.port}: {_short(exc)}")
                    continue
                with self._lock:
                    self._first = index
                return dict(answer)
            # Every endpoint failed: an election (a member lost) is over within about a
            # second; a lost majority is not, and is said after RETRY_FOR.
            if time.monotonic() >= deadline:
                raise StateUnavailable(
                    "etcd is unreachable or has no majority (" + "; ".join(errors) + ")"
                )
            time.sleep(RETRY_PAUSE)

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    # -- keys ------------------------------------------------------------------------------

    def revision(self) -> int:
        """etcd's current revision (a linearizable read of one absent key: a few bytes)."""
        answer = self.call("/kv/range", {"key": _b64(self.root + "~"), "count_only": True})
        return int(answer["header"]["revision"])

    def get(self, name: str) -> Entry | None:
        answer = self.call("/kv/range", {"key": _b64(self.root + name)})
        kvs = answer.get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, since: int | None = None) -> tuple[int, list[Entry]]:
        """Every key under `prefix` (only those changed at revision `since` or later, when
        given) and the revision they were read at."""
        full = self.root + prefix
        body: dict[str, Any] = {"key": _b64(full), "range_end": _prefix_end(full)}
        if since is not None:
            body["min_mod_revision"] = since
        answer = self.call("/kv/range", body)
        return int(answer["header"]["revision"]), [_entry(kv) for kv in answer.get("kvs") or []]

    def count_prefix(self, prefix: str) -> int:
        """How many keys there are under `prefix` (their count only: a few bytes)."""
        full = self.root + prefix
        body = {"key": _b64(full), "range_end": _prefix_end(full), "count_only": True}
        return int(self.call("/kv/range", body).get("count", 0))

    def put(self, name: str, value: str, lease: int | None = None) -> None:
        body: dict[str, Any] = {"key": _b64(self.root + name), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/kv/put", body)

    def delete(self, name: str) -> None:
        self.call("/kv/deleterange", {"key": _b64(self.root + name)})

    def create(self, name: str, value: str, lease: int) -> bool:
        """Put `name` only if it does not exist; True when this call made it."""
        key = _b64(self.root + name)
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": _b64(value), "lease": lease}}],
        }
        return bool(self.call("/kv/txn", txn).get("succeeded"))

    def swap(self, name: str, expected: str, value: str, lease: int) -> bool:
        """Compare-and-swap: `name` becomes `value` (attached to `lease`) only if it now
        holds `expected`; True when it did. An absent key is not `expected`."""
        key = _b64(self.root + name)
        txn = {
            "compare": [
                {"key": key, "result": "EQUAL", "target": "VALUE", "value": _b64(expected)}
            ],
            "success": [{"request_put": {"key": key, "value": _b64(value), "lease": lease}}],
        }
        return bool(self.call("/kv/txn", txn).get("succeeded"))

    def delete_if(self, name: str, expected: str) -> bool:
        """Delete `name` only if it holds `expected`."""
        key = _b64(self.root + name)
        txn = {
            "compare": [
                {"key": key, "result": "EQUAL", "target": "VALUE", "value": _b64(expected)}
            ],
            "success": [{"request_delete_range": {"key": key}}],
        }
        return bool(self.call("/kv/txn", txn).get("succeeded"))

    # -- leases ----------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.call("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keep_alive(self, lease: int) -> int:
        """Renew `lease`; its remaining TTL in seconds, or -1 when it already expired."""
        answer = self.call("/lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """End `lease` now: every key attached to it is deleted."""
        self.call("/kv/lease/revoke", {"ID": lease})


def _session(ca: Path, cert: Path, key: Path) -> requests.Session:
    """Verify etcd against the cluster CA only, and present this node's certificate. The
    environment is not consulted: REQUESTS_CA_BUNDLE or a proxy must not change whom this
    node trusts or where its requests go."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    session.cert = (str(cert), str(key))
    return session


def _entry(kv: dict[str, Any]) -> Entry:
    return Entry(
        key=_unb64(kv["key"]),
        value=_unb64(kv.get("value", "")),
        lease=int(kv.get("lease", 0)),
        mod_revision=int(kv.get("mod_revision", 0)),
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
