"""Join tokens are single-use, expire, and a changed character makes one worthless."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cluster.tokens import JoinRefused, consume_token, issue_token, parse_token
from corral.database import Database
from corral.errors import UserInputError

FP = "ab" * 32


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "db.sqlite")


def test_token_round_trips_through_its_text(db: Database) -> None:
    token, _ = issue_token(db, FP, 60)
    assert parse_token(str(token)) == token
    assert parse_token(f"  {token}\n") == token


def test_a_token_is_accepted_once(db: Database) -> None:
    token, _ = issue_token(db, FP, 60)
    consume_token(db, token.id, token.secret, "node2")
    with pytest.raises(JoinRefused, match="already used by node2"):
        consume_token(db, token.id, token.secret, "node3")


def test_an_expired_token_is_refused(db: Database) -> None:
    token, expires = issue_token(db, FP, 60, now=1000.0)
    assert expires == 1060.0
    with pytest.raises(JoinRefused, match="expired"):
        consume_token(db, token.id, token.secret, "node2", now=1061.0)


def test_a_wrong_secret_is_refused_and_does_not_use_the_token(db: Database) -> None:
    token, _ = issue_token(db, FP, 60)
    wrong = ("A" if token.secret[0] != "A" else "B") + token.secret[1:]
    with pytest.raises(JoinRefused, match="unknown token or wrong secret"):
        consume_token(db, token.id, wrong, "node2")
    consume_token(db, token.id, token.secret, "node2")


def test_an_unknown_id_is_refused(db: Database) -> None:
    with pytest.raises(JoinRefused):
        consume_token(db, "00000000", "x" * 32, "node2")


def test_every_single_bit_flip_is_caught(db: Database) -> None:
    token, _ = issue_token(db, FP, 60)
    text = str(token)
    for i, char in enumerate(text):
        flipped = text[:i] + chr(ord(char) ^ 1) + text[i + 1 :]
        try:
            parsed = parse_token(flipped)
        except UserInputError:
            continue  # no longer a token at all
        if parsed.ca_fingerprint != token.ca_fingerprint:
            continue  # the joiner refuses a CA that does not match (checked by the agent)
        with pytest.raises(JoinRefused):
            consume_token(db, parsed.id, parsed.secret, "node2")


@pytest.mark.parametrize("ttl", [0, -5, 8 * 24 * 3600])
def test_ttl_out_of_range_is_refused(db: Database, ttl: float) -> None:
    with pytest.raises(UserInputError, match="ttl"):
        issue_token(db, FP, ttl)


@pytest.mark.parametrize("text", ["", "abc", "zzzzzzzz.x.y", "a" * 200])
def test_garbage_is_not_a_token(text: str) -> None:
    with pytest.raises(UserInputError, match="not a corral join token"):
        parse_token(text)
