"""The migration's progress as a person sees it: with local disks, a row for the disks (bytes
of total, rate, ETA) above the row for the RAM, each ending at its total."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from corral.cli import migrate_command

MIB = 1 << 20


class Stream:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def stream(self, path: str, *, timeout: float) -> Iterator[dict[str, Any]]:
        yield from self.records


def running(**progress: Any) -> dict[str, Any]:
    return {"state": "running", "progress": progress}


def test_the_disks_row_comes_first_then_the_ram_row(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Console(record=True, width=100, color_system=None)
    monkeypatch.setattr(migrate_command, "console", screen)
    records = [running(phase="prepare", done=0, total=256 * MIB)]
    records += [
        running(phase="disks", done=i * 16 * MIB, total=64 * MIB, mbps=3000.0, eta_s=0.5)
        for i in range(5)
    ]
    records += [
        running(phase="transfer", done=i * 64 * MIB, total=256 * MIB, mbps=2000.0, iteration=1)
        for i in range(5)
    ]
    records.append(
        {"state": "succeeded", "progress": {"phase": "done", "done": 256 * MIB, "total": 256 * MIB}}
    )
    migrate_command.follow_migration(Stream(records), {"id": "t"}, json_lines=False)  # type: ignore[arg-type]
    lines = [ln for ln in screen.export_text().splitlines() if ln.strip()]
    disks = next(i for i, ln in enumerate(lines) if ln.strip().startswith("disks"))
    ram = next(i for i, ln in enumerate(lines) if "256 MiB/256 MiB" in ln)
    assert disks < ram
    assert "64 MiB/64 MiB" in lines[disks]
    assert "375 MB/s" in lines[disks]
