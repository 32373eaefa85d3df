"""The node registry: every member of the cluster as this node knows it, with the facts and
the last heartbeat it saw from each."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from corral.database import Database
from corral.errors import NotFoundError


@dataclass(frozen=True)
class NodeRecord:
    name: str
    address: str
    port: int
    joined_at: float
    last_seen: float | None
    facts: dict[str, Any]
    draining: bool

    def online(self, now: float, offline_after: float) -> bool:
        return self.last_seen is not None and now - self.last_seen <= offline_after

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "joined_at": self.joined_at,
            "last_seen": self.last_seen,
            "facts": self.facts,
            "draining": self.draining,
        }


class NodeRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert(
        self,
        name: str,
        address: str,
        port: int,
        facts: dict[str, Any] | None = None,
        joined_at: float | None = None,
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO nodes (name, address, port, joined_at, facts) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET address = excluded.address,"
                " port = excluded.port",
                (name, address, port, joined_at or time.time(), json.dumps(facts or {})),
            )
            if facts:
                conn.execute("UPDATE nodes SET facts = ? WHERE name = ?", (json.dumps(facts), name))

    def mark_seen(self, name: str, facts: dict[str, Any], at: float | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE nodes SET last_seen = ?, facts = ? WHERE name = ?",
                (at or time.time(), json.dumps(facts), name),
            )

    def list(self) -> list[NodeRecord]:
        return [self._record(r) for r in self.db.query("SELECT * FROM nodes ORDER BY name")]

    def get(self, name: str) -> NodeRecord:
        """:raise NotFoundError: no member of that name."""
        rows = self.db.query("SELECT * FROM nodes WHERE name = ?", (name,))
        if not rows:
            known = ", ".join(n.name for n in self.list()) or "none"
            raise NotFoundError(f"no node {name!r} in the cluster (members: {known})")
        return self._record(rows[0])

    def remove(self, name: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM nodes WHERE name = ?", (name,))

    @staticmethod
    def _record(row: Any) -> NodeRecord:
        return NodeRecord(
            row["name"],
            row["address"],
            row["port"],
            row["joined_at"],
            row["last_seen"],
            json.loads(row["facts"]),
            bool(row["draining"]),
        )
