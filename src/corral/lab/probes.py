"""Watching a guest from the lab's client namespace while it moves: a TCP client that stays
connected to its counter stream, and a ping that measures loss. Used by the demo, the tests
and the benchmarks."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from corral.errors import EnvironmentProblem
from corral.lab import netns
from corral.lab.guest import COUNTER_PORT, Counter, parse_counter
from corral.lab.plan import LabPlan


@dataclass
class CounterClient:
    """A TCP connection to the guest's counter service, read by a thread; `closed` says
    whether the stream ended (a connection that did not survive)."""

    conn: socket.socket
    counters: list[Counter] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each line
    closed: bool = False

    @classmethod
    def connect(cls, plan: LabPlan, address: str, port: int = COUNTER_PORT) -> CounterClient:
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
                    self.arrived.append(time.monotonic())
                    self.counters.append(counter)
        except OSError:
            pass
        self.closed = True

    @property
    def continuous(self) -> bool:
        """True when no line was lost or repeated: the sequence numbers follow each other."""
        seqs = [c.seq for c in self.counters]
        return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True

    def largest_gap(self) -> float | None:
        """The longest wait between two lines as the client saw them (seconds, host clock);
        None when fewer than two lines arrived (nothing was measured)."""
        return self.largest_arrival_gap()

    def largest_arrival_gap(self, since: float = 0.0) -> float | None:
        """The longest wait between two lines as the client saw them (seconds, host clock),
        among lines that arrived after `since` (a time.monotonic() value); None when fewer
        than two did."""
        times = [t for t in self.arrived if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=None)

    def close(self) -> None:
        self.conn.close()


@dataclass
class PingMeter:
    """`ping -i INTERVAL` from the client namespace for as long as it runs."""

    proc: subprocess.Popen[str]
    interval: float

    @classmethod
    def start(cls, plan: LabPlan, address: str, interval: float = 0.02) -> PingMeter:
        argv = netns.in_netns(plan.client_netns, ["ping", "-n", "-i", str(interval), address])
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return cls(proc, interval)

    def stop(self) -> tuple[int, int]:
        """(sent, received).

        :raise EnvironmentProblem: ping printed no summary (nothing was measured)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if match is None:
            raise EnvironmentProblem(f"ping printed no summary: {out.strip()[-200:]!r}")
        return int(match.group(1)), int(match.group(2))
