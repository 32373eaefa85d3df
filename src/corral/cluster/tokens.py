"""Single-use, expiring join tokens.

A token reads `ID.SECRET.CAFINGERPRINT`. The joining node checks the CA it is shown against
the fingerprint before it trusts anything (as kubeadm's discovery hash); the cluster checks
ID and SECRET against its table, where only a hash of the secret is kept, and marks the
token used in the same transaction that accepts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from corral.database import Database
from corral.errors import CorralError, UserInputError

TOKEN_RE = re.compile(r"^([0-9a-f]{8})\.([A-Za-z0-9_-]{32})\.([0-9a-f]{64})$")


class JoinRefused(CorralError):
    """A join token was unknown, wrong, used or expired."""

    exit_code = 9


@dataclass(frozen=True)
class JoinToken:
    id: str
    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}.{self.ca_fingerprint}"


def parse_token(text: str) -> JoinToken:
    """:raise UserInputError: the text is not a token (the message says what it should be)."""
    match = TOKEN_RE.match(text.strip())
    if match is None:
        raise UserInputError(
            "token",
            "not a corral join token (expected ID.SECRET.FINGERPRINT"
            " as printed by 'corral node token')",
        )
    return JoinToken(*match.groups())


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(
    db: Database, ca_fingerprint: str, ttl_seconds: float, now: float | None = None
) -> tuple[JoinToken, float]:
    """A new token and its expiry time."""
    if not 1 <= ttl_seconds <= 7 * 24 * 3600:
        raise UserInputError("ttl", "must be between 1 second and 7 days")
    created = time.time() if now is None else now
    token = JoinToken(secrets.token_hex(4), secrets.token_urlsafe(24), ca_fingerprint)
    expires = created + ttl_seconds
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO join_tokens (id, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (token.id, _hash(token.secret), created, expires),
        )
    return token, expires


def _refusal(row: Any, secret: str, at: float) -> str | None:
    if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
        return "join token refused: unknown token or wrong secret"
    if row["used_at"] is not None:
        return f"join token refused: already used by {row['used_by']}"
    if row["expires_at"] < at:
        return "join token refused: expired"
    return None


def check_token(db: Database, token_id: str, secret: str, now: float | None = None) -> None:
    """Check a token without spending it (so a join refused for another reason keeps it).

    :raise JoinRefused: unknown, wrong secret, already used, or expired.
    """
    at = time.time() if now is None else now
    rows = db.query("SELECT * FROM join_tokens WHERE id = ?", (token_id,))
    refusal = _refusal(rows[0] if rows else None, secret, at)
    if refusal is not None:
        raise JoinRefused(refusal)


def consume_token(
    db: Database,
    token_id: str,
    secret: str,
    joiner: str,
    now: float | None = None,
    conn: sqlite3.Connection | None = None,
) -> None:
    """Accept a token once (inside `conn`'s transaction when given, so it is spent only
    if what it pays for is recorded too).

    :raise JoinRefused: unknown, wrong secret, already used, or expired.
    """
    at = time.time() if now is None else now
    with contextlib.ExitStack() as stack:
        if conn is None:
            conn = stack.enter_context(db.transaction())
        row = conn.execute("SELECT * FROM join_tokens WHERE id = ?", (token_id,)).fetchone()
        refusal = _refusal(row, secret, at)
        if refusal is not None:
            raise JoinRefused(refusal)
        conn.execute(
            "UPDATE join_tokens SET used_at = ?, used_by = ? WHERE id = ?", (at, joiner, token_id)
        )
