"""The simulated guest: memory in a file (mmap), a counter and uptime kept in that memory,
one page dirtied and one `COUNTER <seq> <uptime>` console line per tick, like corral's test
guest. A restored or received guest goes on from what its memory holds."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import time
from pathlib import Path

TICK = 0.1
_HEAD = struct.Struct("<Qd")  # counter, uptime (seconds), at the start of page 0


class Guest:
    def __init__(self, memory: Path, size: int, console: int | None, page_size: int) -> None:
        memory.parent.mkdir(parents=True, exist_ok=True)
        with memory.open("a+b") as handle:
            handle.truncate(size)
            self.mm = mmap.mmap(handle.fileno(), size)
        self.size, self.page_size = size, page_size
        self.pages = size // page_size
        self.console = console  # com1: a tty's file descriptor (uart_backend.c)
        self.lock = threading.Lock()
        self.paused = True
        self.dirty: set[int] = set()
        self._last = time.monotonic()

    def wipe(self) -> None:
        """A fresh boot: memory cleared."""
        with self.lock:
            self.mm[: self.size] = bytes(self.size)

    def say(self, line: str) -> None:
        """Write a line on com1; like bhyve's uart, drop it when the tty takes nothing."""
        if self.console is not None:
            with contextlib.suppress(OSError):
                os.write(self.console, (line + "\n").encode())

    def counter(self) -> tuple[int, float]:
        seq, uptime = _HEAD.unpack_from(self.mm, 0)
        return int(seq), float(uptime)

    def pause(self) -> None:
        with self.lock:
            self.paused = True

    def resume(self) -> None:
        with self.lock:
            self.paused = False
            self._last = time.monotonic()

    def take_dirty(self) -> list[int]:
        with self.lock:
            dirty, self.dirty = sorted(self.dirty), set()
        return dirty

    def page(self, index: int) -> bytes:
        start = index * self.page_size
        with self.lock:
            return self.mm[start : start + self.page_size]

    def write_page(self, index: int, data: bytes) -> None:
        start = index * self.page_size
        self.mm[start : start + len(data)] = data

    def tick(self) -> None:
        with self.lock:
            if self.paused:
                return
            now = time.monotonic()
            seq, uptime = self.counter()
            seq, uptime = seq + 1, uptime + (now - self._last)
            self._last = now
            _HEAD.pack_into(self.mm, 0, seq, uptime)
            page = 1 + seq % max(1, self.pages - 1)
            struct.pack_into("<Q", self.mm, page * self.page_size, seq)
            self.dirty |= {0, page}
        self.say(f"COUNTER {seq} {uptime:.2f}")

    def run_forever(self) -> None:
        while True:
            self.tick()
            time.sleep(TICK)
