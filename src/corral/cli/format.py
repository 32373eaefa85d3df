"""Small renderings shared by the commands: times, sizes, progress records."""

from __future__ import annotations

import time
from typing import Any


def ago(timestamp: float | None, now: float | None = None) -> str:
    """ "3s ago", "5m ago", "never"."""
    if timestamp is None:
        return "never"
    delta = max(0.0, (now or time.time()) - timestamp)
    if delta < 60:
        return f"{delta:.0f}s ago"
    if delta < 3600:
        return f"{delta / 60:.0f}m ago"
    return f"{delta / 3600:.1f}h ago"


def mib(value: Any) -> str:
    """ "1.5 GiB" from a number of MiB."""
    if not isinstance(value, int | float):
        return "?"
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def progress_text(progress: dict[str, Any]) -> str:
    """ "sleeping 3/10 steps" from a task's progress record."""
    if not progress:
        return ""
    parts = [str(progress.get("phase", ""))]
    if "done" in progress and "total" in progress:
        parts.append(f"{progress['done']}/{progress['total']} {progress.get('unit', '')}")
    if progress.get("bytes"):
        parts.append(f"{progress['bytes'] / 1048576:.1f} MiB sent")
    if progress.get("message"):
        parts.append(str(progress["message"]))
    return " ".join(p for p in parts if p).strip()
