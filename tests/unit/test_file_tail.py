"""Reads of growing files are bounded: a console or log read holds at most its limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from corral.database import Database
from corral.file_tail import read_from, read_tail, tail_lines


def test_the_tail_is_read_from_the_end_only(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(100_000)))
    assert read_tail(log, 64) == log.read_bytes()[-64:]
    lines = tail_lines(log, 100_000, limit=1000)
    assert lines[-1] == "line 99999"
    assert len("\n".join(lines)) <= 1000
    assert all(line.startswith("line ") and line[5:].isdigit() for line in lines)  # none cut


def test_a_log_is_read_in_bounded_chunks(tmp_path: Path) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"x" * 2500)
    assert read_from(log, 0, limit=1000) == b"x" * 1000
    assert read_from(log, 2000, limit=1000) == b"x" * 500
    assert read_from(tmp_path / "none", 0) == b""
    assert tail_lines(tmp_path / "none", 5) == []


def test_the_database_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = Database(tmp_path / "state" / "corral.db")
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.path.parent.stat().st_mode) == 0o700
    with db.transaction() as conn:
        conn.execute("INSERT INTO join_tokens VALUES ('a', 'b', 0, 1, NULL, NULL)")
    for side in tmp_path.glob("state/corral.db-*"):
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
