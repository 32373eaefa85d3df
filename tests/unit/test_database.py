"""The node database: WAL mode, versioned schema, all-or-nothing transactions."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.database import SCHEMA_MIGRATIONS, Database


def test_new_database_is_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    db = Database(tmp_path / "state" / "corral.db")
    assert db.version == len(SCHEMA_MIGRATIONS)
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"nodes", "vms", "tasks", "task_events", "migrations", "join_tokens"} <= tables


def test_migrating_again_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "corral.db")
    with db.transaction() as conn:
        conn.execute("INSERT INTO vms VALUES ('a', 'node1', '{}', 'running', 0)")
    again = Database(tmp_path / "corral.db")
    assert again.version == len(SCHEMA_MIGRATIONS)
    assert again.query("SELECT name FROM vms")[0][0] == "a"


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "corral.db")

    def insert_then_fail() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO vms VALUES ('a', 'node1', '{}', 'running', 0)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert db.query("SELECT COUNT(*) FROM vms")[0][0] == 0
