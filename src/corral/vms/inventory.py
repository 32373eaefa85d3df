"""The VM records of a node's database: which VMs exist, which node owns each, its spec and
its last recorded state, with the history of that state."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from corral.database import Database
from corral.errors import ConflictError, NotFoundError
from corral.model import VmSpec


@dataclass(frozen=True)
class VmRecord:
    name: str
    owner: str
    spec: VmSpec
    state: str
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "state": self.state,
            "updated_at": self.updated_at,
            "spec": self.spec.model_dump(mode="json"),
        }


class VmInventory:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, spec: VmSpec, owner: str, state: str) -> VmRecord:
        """:raise ConflictError: a VM of that name is already recorded."""
        now = time.time()
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM vms WHERE name = ?", (spec.name,)).fetchone():
                raise ConflictError(f"a VM named {spec.name!r} already exists")
            conn.execute(
                "INSERT INTO vms (name, owner, spec, state, updated_at) VALUES (?, ?, ?, ?, ?)",
                (spec.name, owner, spec.model_dump_json(), state, now),
            )
            conn.execute(
                "INSERT INTO vm_events VALUES (?, ?, NULL, ?, ?)",
                (spec.name, now, state, "defined"),
            )
        return self.get(spec.name)

    def get(self, name: str) -> VmRecord:
        """:raise NotFoundError: no VM of that name."""
        rows = self.db.query("SELECT * FROM vms WHERE name = ?", (name,))
        if not rows:
            raise NotFoundError(f"no VM named {name!r} on this node")
        return self._record(rows[0])

    def all(self) -> list[VmRecord]:
        return [self._record(r) for r in self.db.query("SELECT * FROM vms ORDER BY name")]

    def names_owned_by(self, node: str) -> list[str]:
        """The names of the VMs this node's records say `node` owns (no spec is parsed)."""
        rows = self.db.query("SELECT name FROM vms WHERE owner = ? ORDER BY name", (node,))
        return [str(r[0]) for r in rows]

    def count_owned_by(self, node: str) -> int:
        """How many VMs this node's records say `node` owns."""
        rows = self.db.query("SELECT COUNT(*) FROM vms WHERE owner = ?", (node,))
        return int(rows[0][0])

    def set_state(self, name: str, state: str, reason: str) -> VmRecord:
        """Record a new state (and the event) if it differs from the recorded one."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state FROM vms WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no VM named {name!r} on this node")
            if row["state"] != state:
                conn.execute(
                    "UPDATE vms SET state = ?, updated_at = ? WHERE name = ?", (state, now, name)
                )
                conn.execute(
                    "INSERT INTO vm_events VALUES (?, ?, ?, ?, ?)",
                    (name, now, row["state"], state, reason),
                )
        return self.get(name)

    def note(self, name: str, reason: str) -> None:
        """Record an event that does not change the state (a restore, say)."""
        record = self.get(name)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO vm_events VALUES (?, ?, ?, ?, ?)",
                (name, time.time(), record.state, record.state, reason),
            )

    def remove(self, name: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM vms WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO vm_events VALUES (?, ?, NULL, ?, ?)",
                (name, time.time(), "deleted", "deleted"),
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM vm_events WHERE vm = ? ORDER BY at, rowid", (name,))
        return [
            {"at": r["at"], "from": r["from_state"], "to": r["to_state"], "reason": r["reason"]}
            for r in rows
        ]

    @staticmethod
    def _record(row: Any) -> VmRecord:
        return VmRecord(
            row["name"],
            row["owner"],
            VmSpec.model_validate_json(row["spec"]),
            row["state"],
            row["updated_at"],
        )
