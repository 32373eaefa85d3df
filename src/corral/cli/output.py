"""How the CLI speaks: one console for people, JSON for programs, and the error boundary
that turns every corral error into a one-line message and its exit code."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)
err_console = errors  # warnings for people, beside what goes to stdout


def print_table(table: Any, *, wide: bool = False) -> None:
    """A table for people; `wide`: every column at its full width, whatever the terminal
    (long lines, as `kubectl -o wide`)."""
    if wide:
        Console(width=max(console.width, 240)).print(table)
    else:
        console.print(table)


def print_json(data: Any) -> None:
    """Write `data` as JSON on stdout, for programs."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, code: int) -> None:
    """Print `message` as an error and exit with `code`."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)
