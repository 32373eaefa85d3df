"""Who is alive, spread by gossip: a heartbeat goes to a few peers, not to all, and carries
what this node knows of every member's latest beat, so the cost of an idle node stays the
same as the cluster grows (gossip-style failure detection, as in van Renesse, Minsky and
Hayden's "A Gossip-Style Failure Detection Service", and Consul's and Nomad's SWIM, at a
constant fan-out).

Each agent numbers its beats: (generation, sequence), the generation being the time the
agent started, so a restarted agent's beats are newer than its last life's. A member is alive
while its beats keep coming, directly or through others; one whose newest beat is older than
`offline_after` here is offline. A beat also names the member's facts' version and its live
numbers (facts_cache.py); a node whose version is not the one held is asked for its facts
directly at the next beat.

Up to FANOUT peers a member talks to all of them (as a full mesh: small clusters); beyond, it
picks FANOUT each interval, those whose facts it wants first, then those it has reached least
recently, so every peer is reached directly every few intervals. A member this node fails to
reach is unreachable from here: what others say of it does not keep it online here until a
heartbeat to it succeeds again (its address may be wrong here; placement and migrations need
to reach it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

FANOUT = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Beat:
    generation: float
    sequence: int
    version: str
    live: dict[str, Any]
    age: float = 0.0  # seconds since its member sent it, as far as the relays know

    def newer_than(self, other: Beat | None) -> bool:
        return other is None or (self.generation, self.sequence) > (
            other.generation,
            other.sequence,
        )

    def to_json(self) -> list[Any]:
        return [self.generation, self.sequence, self.version, self.live, round(self.age, 3)]

    @classmethod
    def from_json(cls, data: Any) -> Beat:
        generation, sequence, version, live, *rest = data
        age = max(0.0, float(rest[0])) if rest else 0.0
        return cls(float(generation), int(sequence), str(version), dict(live), age)


class Beats:
    """The newest beat known of each member, this node's own included."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.generation = time.time()
        self._sequence = 0
        self._beats: dict[str, tuple[Beat, float]] = {}  # and when it was taken (monotonic)
        self._lock = threading.Lock()

    def beat(self, live: dict[str, Any]) -> Beat:
        """This node's next beat, with its facts' version and live numbers."""
        with self._lock:
            self._sequence += 1
            own = Beat(self.generation, self._sequence, str(live["facts_version"]), live)
            self._beats[self.name] = (own, time.monotonic())
        return own

    def table(self) -> dict[str, list[Any]]:
        """What a heartbeat carries: every member's newest beat known here, with its age
        (so a beat relayed late is not taken for a recent one)."""
        now = time.monotonic()
        with self._lock:
            return {
                name: replace(beat, age=beat.age + now - taken).to_json()
                for name, (beat, taken) in self._beats.items()
            }

    def merge(self, table: Any, skip: str | None = None) -> list[tuple[str, Beat]]:
        """Take the beats newer than those known (never this node's own, nor `skip`'s);
        returns them. Malformed entries are ignored."""
        if not isinstance(table, dict):
            return []
        fresh = []
        with self._lock:
            for name, data in table.items():
                if name in (self.name, skip):
                    continue
                try:
                    beat = Beat.from_json(data)
                except (TypeError, ValueError):
                    continue
                known = self._beats.get(name)
                if beat.newer_than(known[0] if known else None):
                    self._beats[name] = (beat, time.monotonic())
                    fresh.append((name, beat))
        return fresh

    def forget(self, keep: set[str]) -> None:
        with self._lock:
            for name in set(self._beats) - keep - {self.name}:
                del self._beats[name]


def choose(
    peers: Sequence[T],
    name_of: Callable[[T], str],
    heard: dict[str, float],
    reached: dict[str, float],
    asking: set[str],
    since: float,
    stale: float,
    fanout: int = FANOUT,
) -> list[T]:
    """The peers to send this interval's heartbeat to. Not those reached since `since`,
    nor those that sent one since then, unless this node has not reached them itself since
    `stale` (a member it cannot reach must be found out, even if it hears from it). All of
    them in a small cluster, else `fanout`: those whose facts are wanted first, then the
    least recently reached."""

    def due(name: str) -> bool:
        last = reached.get(name, 0.0)
        return last < since and (heard.get(name, 0.0) < since or last < stale)

    chosen = [p for p in peers if due(name_of(p))]
    if len(peers) <= fanout:
        return chosen
    chosen.sort(key=lambda p: (name_of(p) not in asking, reached.get(name_of(p), 0.0)))
    return chosen[:fanout]
