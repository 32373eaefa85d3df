"""Helpers for the end-to-end migration tests: a client that stays connected to the guest's
counter stream, a ping that measures loss, and the migrate command with its JSON lines."""

from __future__ import annotations

import json
from typing import Any

from corral.lab.plan import LabNode
from corral.lab.probes import CounterClient, PingMeter
from tests.integration.vm_helpers import corral

__all__ = ["CounterClient", "PingMeter", "migrate"]


def migrate(
    node: LabNode, vm: str, target: str, *args: str, timeout: float = 600
) -> tuple[int, list[dict[str, Any]], str]:
    """`corral migrate --json`: exit code, the JSON lines, stderr."""
    out = corral(node, "migrate", vm, target, "--json", *args, timeout=timeout)
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    return out.returncode, lines, out.stderr
