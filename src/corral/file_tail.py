"""Bounded reads of files that grow without limit (consoles, task logs): never more than a
fixed number of bytes into memory, whatever the file's size.

Must never import any other layer of corral.
"""

from __future__ import annotations

import os
from pathlib import Path

TAIL_LIMIT = 4 * 1024 * 1024  # what a console read holds at most
CHUNK_LIMIT = 1024 * 1024  # what one read of a log from an offset returns at most


def read_tail(path: Path, limit: int = TAIL_LIMIT) -> bytes:
    """The last `limit` bytes of `path` (b"" when it does not exist)."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            return handle.read(limit)
    except FileNotFoundError:
        return b""


def tail_lines(path: Path, lines: int, limit: int = TAIL_LIMIT) -> list[str]:
    """The last `lines` lines of `path`, read from its last `limit` bytes only (a line cut
    by that bound is dropped)."""
    data = read_tail(path, limit)
    text = data.decode(errors="replace").splitlines()
    if len(data) == limit and text:
        text = text[1:]
    return text[-lines:] if lines > 0 else []


def read_from(path: Path, offset: int, limit: int = CHUNK_LIMIT) -> bytes:
    """At most `limit` bytes of `path` from byte `offset` (b"" when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(limit)
    except FileNotFoundError:
        return b""
