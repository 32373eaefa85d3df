"""The migration journal: one row per migration in the source node's database, with every
step recorded *before* it is taken, so a crash at any point leaves the truth of how far it
got for recovery to act on."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from corral.database import Database
from corral.errors import NotFoundError


class MigrationPhase(StrEnum):
    PREFLIGHT = "preflight"
    PREPARE = "prepare"  # the destination task is being created
    DISK_COPY = "disk-copy"  # local disks are copied to the target (--with-local-disks)
    TRANSFER = "transfer"  # memory is moving
    SWITCHOVER = "switchover"  # the source has sent its last state
    HANDOFF = "handoff"  # the target runs the VM; ownership moves
    CLEANUP = "cleanup"  # the source's QEMU is stopped
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled-back"  # failed or cancelled before the target ran: source runs
    FAILED = "failed"  # failed and could not be rolled back (see the journal)
    RECOVERED = "recovered"  # repaired by `migrate --recover`


FINISHED = {
    MigrationPhase.SUCCEEDED,
    MigrationPhase.ROLLED_BACK,
    MigrationPhase.FAILED,
    MigrationPhase.RECOVERED,
}


@dataclass(frozen=True)
class MigrationRecord:
    id: str
    vm: str
    source: str
    target: str
    phase: MigrationPhase
    journal: list[dict[str, Any]]
    started_at: float
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "phase": self.phase.value,
            "journal": self.journal,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class MigrationJournal:
    def __init__(self, db: Database) -> None:
        self.db = db

    def begin(self, vm: str, source: str, target: str) -> MigrationRecord:
        mid = uuid.uuid4().hex[:12]
        now = time.time()
        entry = [{"at": now, "phase": MigrationPhase.PREFLIGHT.value, "detail": ""}]
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO migrations (id, vm, source, target, state, journal,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mid, vm, source, target, MigrationPhase.PREFLIGHT.value, json.dumps(entry), now),
            )
        return self.get(mid)

    def step(self, mid: str, phase: MigrationPhase, detail: str = "") -> None:
        """Record that `phase` is about to be (or has been) entered."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT journal FROM migrations WHERE id = ?", (mid,)).fetchone()
            if row is None:
                raise NotFoundError(f"no migration {mid}")
            entries = json.loads(row["journal"])
            entries.append({"at": now, "phase": phase.value, "detail": detail})
            finished = now if phase in FINISHED else None
            conn.execute(
                "UPDATE migrations SET state = ?, journal = ?, finished_at = ? WHERE id = ?",
                (phase.value, json.dumps(entries), finished, mid),
            )

    def get(self, mid: str) -> MigrationRecord:
        rows = self.db.query("SELECT * FROM migrations WHERE id = ?", (mid,))
        if not rows:
            raise NotFoundError(f"no migration {mid}")
        return self._record(rows[0])

    def unfinished(self) -> list[MigrationRecord]:
        rows = self.db.query("SELECT * FROM migrations WHERE finished_at IS NULL")
        return [self._record(r) for r in rows]

    def latest(self, vm: str) -> MigrationRecord | None:
        rows = self.db.query(
            "SELECT * FROM migrations WHERE vm = ? ORDER BY started_at DESC LIMIT 1", (vm,)
        )
        return self._record(rows[0]) if rows else None

    def recent(self, limit: int = 50) -> list[MigrationRecord]:
        rows = self.db.query("SELECT * FROM migrations ORDER BY started_at DESC LIMIT ?", (limit,))
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(row: Any) -> MigrationRecord:
        return MigrationRecord(
            row["id"],
            row["vm"],
            row["source"],
            row["target"],
            MigrationPhase(row["state"]),
            json.loads(row["journal"]),
            row["started_at"],
            row["finished_at"],
        )
