"""The node registry: every member of the cluster as this node knows it, with the facts and
the last heartbeat it saw from each.

A member is a name bound to one certificate (the SHA-256 fingerprint of its DER, recorded
when the CA holder admitted it). Only the CA holder changes who is a member: it numbers
each change (`version`), and every other node takes the CA holder's whole list
(`RegistrySnapshot`) when it sees a newer version, so a node that was offline during a
removal learns of it on its next contact. A removed member's certificate stays on the
revoked list for good.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.database import Database
from corral.errors import ConflictError, NotFoundError

MAX_PARSED = 256  # members whose parsed facts are kept (x4 before the cache is emptied)
ALIVE_WRITE_S = 60.0  # how often a member's liveness reaches the database (for a restart)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    address: str
    port: int
    joined_at: float
    last_seen: float | None
    facts: dict[str, Any]
    draining: bool
    fingerprint: str | None = None
    holds_ca: bool = False

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
            "fingerprint": self.fingerprint,
            "holds_ca": self.holds_ca,
        }


@dataclass(frozen=True)
class Member:
    """Who a member is, as the CA holder hands it out (no facts, no heartbeat)."""

    name: str
    address: str
    port: int
    joined_at: float
    fingerprint: str
    holds_ca: bool = False


@dataclass(frozen=True)
class RegistrySnapshot:
    version: int
    members: tuple[Member, ...]
    revoked: tuple[str, ...] = field(default=())


class NodeRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Members heard from whose facts did not change: when, and their live numbers. Kept
        # in memory and written to the database at most every ALIVE_WRITE_S per member, so a
        # heartbeat costs no database write; every read sees them (`_record`).
        self._alive: dict[str, tuple[float, dict[str, Any]]] = {}
        self._written: dict[str, float] = {}
        self._held: dict[str, tuple[str | None, bool, object]] = {}  # version, draining, VMs
        self._alive_lock = threading.Lock()
        self._by_fingerprint: tuple[int, dict[str, tuple[str, bool]]] | None = None
        self._parsed: dict[str, dict[str, Any]] = {}  # facts text -> parsed (_facts_of)
        # Membership by gossip vouches for the members it holds online ("no news is good
        # news"): since when, by the wall clock; None when it does not (agent/gossip.py).
        self.vouch: Callable[[str], float | None] | None = None

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[NodeRecord]:
        return [self._record(r) for r in self.db.query("SELECT * FROM nodes ORDER BY name")]

    def get(self, name: str) -> NodeRecord:
        """:raise NotFoundError: no member of that name."""
        rows = self.db.query("SELECT * FROM nodes WHERE name = ?", (name,))
        if not rows:
            known = ", ".join(n.name for n in self.list()) or "none"
            raise NotFoundError(f"no node {name!r} in the cluster (members: {known})")
        return self._record(rows[0])

    def member_by_fingerprint(self, fingerprint: str) -> tuple[str, bool] | None:
        """(name, holds the CA) of the current member with this certificate: what every
        request over mutual TLS asks. One small read of the list's version; the members
        are read again only when it moved (every change of the list bumps it in the same
        transaction, so rows read between two equal versions are that version's)."""
        version = self.version
        cached = self._by_fingerprint
        if cached is None or cached[0] != version:
            rows = self.db.query("SELECT name, fingerprint, holds_ca FROM nodes")
            table = {
                str(r["fingerprint"]): (str(r["name"]), bool(r["holds_ca"]))
                for r in rows
                if r["fingerprint"]
            }
            if self.version != version:  # changed while reading: do not keep it
                return table.get(fingerprint)
            cached = self._by_fingerprint = (version, table)
        return cached[1].get(fingerprint)

    def ca_holder(self) -> NodeRecord | None:
        rows = self.db.query("SELECT * FROM nodes WHERE holds_ca = 1")
        return self._record(rows[0]) if rows else None

    def is_revoked(self, fingerprint: str) -> bool:
        rows = self.db.query("SELECT 1 FROM revoked_certs WHERE fingerprint = ?", (fingerprint,))
        return bool(rows)

    @property
    def version(self) -> int:
        rows = self.db.query("SELECT value FROM cluster_meta WHERE key = 'registry_version'")
        return int(rows[0][0]) if rows else 0

    def snapshot(self) -> RegistrySnapshot:
        members = tuple(
            Member(n.name, n.address, n.port, n.joined_at, n.fingerprint, n.holds_ca)
            for n in self.list()
            if n.fingerprint is not None
        )
        revoked = tuple(
            str(r[0]) for r in self.db.query("SELECT fingerprint FROM revoked_certs ORDER BY 1")
        )
        return RegistrySnapshot(self.version, members, revoked)

    # -- changing (the CA holder) ----------------------------------------------------------

    def admit(
        self,
        member: Member,
        facts: dict[str, Any] | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> int:
        """Record a new member and number the change (inside `conn`'s transaction when
        given); returns the new version.

        :raise ConflictError: the name, the address or the certificate is a member's
            already, or the certificate was revoked.
        """
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.db.transaction())
            if conn.execute(
                "SELECT 1 FROM revoked_certs WHERE fingerprint = ?", (member.fingerprint,)
            ).fetchone():
                raise ConflictError(f"the certificate of {member.name} was revoked")
            clash = conn.execute(
                "SELECT name, address FROM nodes WHERE name = ? OR address = ? OR fingerprint = ?",
                (member.name, member.address, member.fingerprint),
            ).fetchone()
            if clash is not None:
                if clash["name"] == member.name:
                    raise ConflictError(f"node_name: {member.name!r} is already a member")
                if clash["address"] == member.address:
                    raise ConflictError(f"address: {member.address} is member {clash['name']}'s")
                raise ConflictError(f"the certificate of {member.name} is {clash['name']}'s")
            self._insert(conn, member, facts)
            return self._bump(conn)

    def revoke(self, name: str, at: float | None = None) -> int:
        """Remove member `name` and revoke its certificate; returns the new version.

        :raise NotFoundError: no member of that name.
        """
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no node {name!r} in the cluster")
            if row["fingerprint"] is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO revoked_certs VALUES (?, ?, ?)",
                    (row["fingerprint"], name, at or time.time()),
                )
            conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
            self._forget(name)
            return self._bump(conn)

    # -- following (every other member) ----------------------------------------------------

    def apply(self, snapshot: RegistrySnapshot) -> bool:
        """Take the CA holder's list if it is newer than ours; True when it was. Members
        keep their address and the facts and heartbeat this node saw, as long as their
        certificate is the same (no list moves a member to another address: its certificate
        names the old one); a member whose certificate changed is a new member."""
        with self.db.transaction() as conn:
            if snapshot.version <= self._version(conn):
                return False
            wanted = {m.name: m for m in snapshot.members}
            for row in conn.execute("SELECT name, fingerprint FROM nodes").fetchall():
                member = wanted.get(row["name"])
                if member is None or member.fingerprint != row["fingerprint"]:
                    conn.execute("DELETE FROM nodes WHERE name = ?", (row["name"],))
                    self._forget(row["name"])
            for member in snapshot.members:
                exists = conn.execute(
                    "SELECT 1 FROM nodes WHERE name = ?", (member.name,)
                ).fetchone()
                if exists:  # the same certificate: its address is the one it was admitted with
                    conn.execute(
                        "UPDATE nodes SET holds_ca = ? WHERE name = ?",
                        (int(member.holds_ca), member.name),
                    )
                else:
                    self._insert(conn, member, None)
            for fingerprint in snapshot.revoked:
                conn.execute(
                    "INSERT OR IGNORE INTO revoked_certs VALUES (?, ?, ?)",
                    (fingerprint, "", time.time()),
                )
            self._set_version(conn, snapshot.version)
            return True

    def mark_seen(self, name: str, facts: dict[str, Any], at: float | None = None) -> None:
        """Record a member's facts as it reported them, with its maintenance flag."""
        at = at or time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE nodes SET last_seen = ?, facts = ?, draining = ? WHERE name = ?",
                (at, json.dumps(facts), int(bool(facts.get("draining"))), name),
            )
        with self._alive_lock:
            self._alive.pop(name, None)
            self._written[name] = at
            self._held[name] = (
                facts.get("facts_version"),
                bool(facts.get("draining")),
                facts.get("vm_count"),
            )

    def mark_alive(self, name: str, live: dict[str, Any], at: float | None = None) -> None:
        """A member was heard from and its facts are the ones recorded: note when and its
        live numbers (free memory, VM count, maintenance) in memory; written to the
        database only every ALIVE_WRITE_S, or at once when its maintenance flag changed.

        :raise NotFoundError: no member of that name."""
        at = at or time.time()
        held = self.held(name)
        with self._alive_lock:
            previous = self._alive.get(name)
            if previous is not None and previous[0] > at:
                return  # older news than what is known
            self._alive[name] = (at, dict(live))
            due = at - self._written.get(name, 0.0) >= ALIVE_WRITE_S
        changed = held[1] != bool(live.get("draining", held[1])) or held[2] != live.get(
            "vm_count", held[2]
        )  # what a restarted agent must still know: its maintenance, its VM count
        if due or changed:
            self.mark_seen(name, self.get(name).facts, at)

    def mark_gone(self, name: str) -> None:
        """Member `name` is known to be offline now (its etcd lease ended): nothing heard of
        it before counts.

        :raise NotFoundError: no member of that name."""
        self.get(name)
        with self._alive_lock:
            self._alive.pop(name, None)
        with self.db.transaction() as conn:
            conn.execute("UPDATE nodes SET last_seen = NULL WHERE name = ?", (name,))

    def _forget(self, name: str) -> None:
        """A member left: nothing heard of it is kept."""
        with self._alive_lock:
            self._alive.pop(name, None)
            self._written.pop(name, None)
            self._held.pop(name, None)

    def held(self, name: str) -> tuple[str | None, bool, object]:
        """The version of member `name`'s facts recorded here, its recorded maintenance
        flag and VM count, from memory (read from the database once).

        :raise NotFoundError: no member of that name."""
        with self._alive_lock:
            found = self._held.get(name)
        if found is None:
            record = self.get(name)
            found = (
                record.facts.get("facts_version"),
                record.draining,
                record.facts.get("vm_count"),
            )
            with self._alive_lock:
                self._held[name] = found
        return found

    # -- inside ----------------------------------------------------------------------------

    @staticmethod
    def _insert(conn: Any, member: Member, facts: dict[str, Any] | None) -> None:
        conn.execute(
            "INSERT INTO nodes (name, address, port, joined_at, facts, fingerprint, holds_ca)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                member.name,
                member.address,
                member.port,
                member.joined_at,
                json.dumps(facts or {}),
                member.fingerprint,
                int(member.holds_ca),
            ),
        )

    @staticmethod
    def _version(conn: Any) -> int:
        row = conn.execute(
            "SELECT value FROM cluster_meta WHERE key = 'registry_version'"
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_version(conn: Any, version: int) -> None:
        conn.execute(
            "INSERT INTO cluster_meta VALUES ('registry_version', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )

    def _bump(self, conn: Any) -> int:
        version = self._version(conn) + 1
        self._set_version(conn, version)
        return version

    def _facts_of(self, text: str) -> dict[str, Any]:
        """A member's facts as stored, parsed once per distinct text (they change rarely;
        every heartbeat lists the members): a copy, so a caller may change it."""
        parsed = self._parsed.get(text)
        if parsed is None:
            parsed = json.loads(text)
            if len(self._parsed) > 4 * MAX_PARSED:
                self._parsed.clear()
            self._parsed[text] = parsed
        return dict(parsed)

    def _record(self, row: Any) -> NodeRecord:
        facts, last_seen, draining = self._facts_of(row["facts"]), row["last_seen"], row["draining"]
        with self._alive_lock:
            alive = self._alive.get(row["name"])
        if alive is not None and (last_seen is None or alive[0] > last_seen):
            last_seen, facts = alive[0], {**facts, **alive[1]}
            draining = facts.get("draining", draining)
        vouched = self.vouch(row["name"]) if self.vouch is not None else None
        if vouched is not None and (last_seen is None or vouched > last_seen):
            last_seen = vouched
        return NodeRecord(
            row["name"],
            row["address"],
            row["port"],
            row["joined_at"],
            last_seen,
            facts,
            bool(draining),
            row["fingerprint"],
            bool(row["holds_ca"]),
        )
