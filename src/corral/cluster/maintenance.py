"""A node's maintenance mode (draining).

The node itself keeps the flag, in its own database, and reports it in its facts: every
member learns it from the next heartbeat, and preflight, which asks a target's facts afresh,
learns it at once. The node is the authority: while draining it refuses to receive a VM
(receive task, re-home), whatever a source believed, so no race with a stale view places a
VM there. No CA holder is needed to start or end maintenance.

Must never import: agent, cli, lab, migration.
"""

from __future__ import annotations

from corral.database import Database

KEY = "draining"


def is_draining(db: Database) -> bool:
    rows = db.query("SELECT value FROM cluster_meta WHERE key = ?", (KEY,))
    return bool(rows) and rows[0][0] == "1"


def set_draining(db: Database, on: bool) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO cluster_meta VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (KEY, "1" if on else "0"),
        )
