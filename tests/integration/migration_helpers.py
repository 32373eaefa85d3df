"""Helpers for the end-to-end migration tests: a client that stays connected to the guest's
counter stream, a ping that measures loss, and the migrate command with its JSON lines."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from corral.lab import netns
from corral.lab.guest import Counter, parse_counter
from corral.lab.plan import LabNode, LabPlan
from tests.integration.vm_helpers import corral


@dataclass
class CounterClient:
    """A TCP connection from the client namespace to the guest's counter service, read by a
    thread; `closed` says whether the stream ended (a connection that did not survive)."""

    conn: socket.socket
    counters: list[Counter] = field(default_factory=list)
    closed: bool = False

    @classmethod
    def connect(cls, plan: LabPlan, address: str, port: int = 7000) -> CounterClient:
        client = cls(netns.connect_in(plan.client_netns, address, port, timeout=10))
        client.conn.settimeout(None)
        threading.Thread(target=client._read, daemon=True).start()
        return client

    def _read(self) -> None:
        stream = self.conn.makefile("r")
        try:
            for line in stream:
                counter = parse_counter(line)
                if counter is not None:
                    self.counters.append(counter)
        except OSError:
            pass
        self.closed = True

    def close(self) -> None:
        self.conn.close()


@dataclass
class PingLoss:
    """`ping -i 0.02` from the client namespace for as long as it runs."""

    proc: subprocess.Popen[str]

    @classmethod
    def start(cls, plan: LabPlan, address: str) -> PingLoss:
        argv = netns.in_netns(plan.client_netns, ["ping", "-n", "-i", "0.02", address])
        return cls(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )

    def stop(self) -> tuple[int, int]:
        """(sent, received)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert match, out
        return int(match.group(1)), int(match.group(2))


def migrate(
    node: LabNode, vm: str, target: str, *args: str, timeout: float = 600
) -> tuple[int, list[dict[str, Any]], str]:
    """`corral migrate --json`: exit code, the JSON lines, stderr."""
    out = corral(node, "migrate", vm, target, "--json", *args, timeout=timeout)
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    return out.returncode, lines, out.stderr
