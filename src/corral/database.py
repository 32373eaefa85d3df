"""The node's SQLite database: one file per node, WAL mode, versioned schema migrations,
and one way to write: `transaction()`, which commits all or nothing.

Must never import any layer of corral; the stores of tasks, cluster and migration build on it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Each entry moves the schema one version up; never edit one that has shipped, append.
SCHEMA_MIGRATIONS: tuple[str, ...] = (
    # 1: nodes, VMs, tasks with their event history, migrations, join tokens
    """
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        port INTEGER NOT NULL,
        joined_at REAL NOT NULL,
        last_seen REAL,
        facts TEXT NOT NULL DEFAULT '{}',
        draining INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE vms (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        args TEXT NOT NULL,
        owner TEXT NOT NULL,
        after TEXT,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        progress TEXT NOT NULL DEFAULT '{}',
        result TEXT,
        error TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        log_path TEXT NOT NULL
    );
    CREATE INDEX tasks_state ON tasks(state, created_at);
    CREATE TABLE task_events (
        task_id TEXT NOT NULL REFERENCES tasks(id),
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX task_events_task ON task_events(task_id, at);
    CREATE TABLE migrations (
        id TEXT PRIMARY KEY,
        vm TEXT NOT NULL,
        source TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        journal TEXT NOT NULL DEFAULT '[]',
        started_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        used_by TEXT
    );
    """,
    # 2: the history of each VM's recorded state, so "it died while nobody watched" is kept
    """
    CREATE TABLE vm_events (
        vm TEXT NOT NULL,
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX vm_events_vm ON vm_events(vm, at);
    """,
    # 3: node identity: each member's certificate (SHA-256 of its DER), which member holds
    # the CA key, the certificates of removed members, and the registry's version
    """
    ALTER TABLE nodes ADD COLUMN fingerprint TEXT;
    ALTER TABLE nodes ADD COLUMN holds_ca INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX nodes_fingerprint ON nodes(fingerprint);
    CREATE TABLE revoked_certs (
        fingerprint TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    CREATE TABLE cluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 4: a failed task keeps its error's type and exit code, so the CLI that followed it
    # exits as the error says
    """
    ALTER TABLE tasks ADD COLUMN error_type TEXT;
    ALTER TABLE tasks ADD COLUMN exit_code INTEGER;
    """,
)


class Database:
    """The node's database file. Safe to share between threads: each thread keeps its own
    connection (opening one, with its pragmas, cost more than most queries), and SQLite's
    WAL lets readers run beside one writer. A query or transaction started while the
    thread's connection is inside a transaction gets a connection of its own, as before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._migrate_lock = threading.Lock()
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.chmod(0o700)
        if not path.exists():  # created private whatever the umask: it holds the tokens
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self.migrate()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, or a fresh one if it is busy in a transaction."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        if not conn.in_transaction:
            yield conn
            return
        fresh = self._open()
        try:
            yield fresh
        finally:
            fresh.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE): committed on success, rolled back on error."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # never leave a kept connection holding the lock
                    conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query."""
        with self._connection() as conn:
            return list(conn.execute(sql, params))

    @property
    def version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    def migrate(self) -> None:
        """Apply every schema migration newer than the file's version, each atomically."""
        with self._migrate_lock:
            for number, script in enumerate(SCHEMA_MIGRATIONS, start=1):
                with self.transaction() as conn:
                    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    if current >= number:
                        continue
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
