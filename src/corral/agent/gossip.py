"""Who is alive, at a cost per node that does not grow with the cluster: each member is
watched by a few others, and only changes travel ("no news is good news").

The earlier design (every heartbeat carrying every member's newest beat, as in van Renesse,
Minsky and Hayden's gossip-style failure detector) made each message O(n), so the cluster's
total cost grew faster than its size. This one follows SWIM (Das, Gupta and Motivala, 2002;
Consul's and Nomad's memberlist) for dissemination and refutation, and Rapid (Suresh et al.,
USENIX ATC 2018) for who watches whom:

- **Watch rings.** Ring i orders the members by a digest of `i/name`; on each of RINGS rings
  a member watches its successor (the next one on that ring when that one is already
  watched). Every member is thus watched by one member per ring, the same on every node
  (the rings depend only on the names), and each member exchanges a heartbeat with about
  2 x RINGS others an interval, whatever the cluster's size. The rings skip members known
  to be offline, so a dead member's subjects get a new watcher.
- **State, not beats.** Each member's state is (generation, sequence, offline, facts
  version, live numbers); the generation is the time its agent started, the sequence grows
  only when its state changes (a live number moved, its facts changed, or it refutes a
  claim that it is offline). An idle member's state does not change, so it sends no news.
- **Declaring a member offline.** A watcher that has exchanged no heartbeat with its subject
  for `detect_after` declares it offline at the state it holds: same generation and
  sequence, offline. Offline wins over alive at an equal key; a higher key wins over both.
  A member that hears it was declared offline (it is alive) refutes: it raises its
  sequence, and its new alive state replaces the claim everywhere.
- **News** (states that changed here within the news window) ride every heartbeat and
  every answer, and a fresh piece of news is pushed to this node's subjects at once, so a
  change crosses the cluster in a few hops rather than a few intervals. Each heartbeat also
  carries a digest of the sender's whole view; a node whose view keeps differing from its
  subject's (news lost, or the node was away longer than the window) asks for the whole
  view once.
- **Here, not everywhere.** A member this node fails to reach is unreachable *here* (not
  online here, whatever others say) until a heartbeat to it succeeds; and a node that has
  exchanged no heartbeat with anyone for `offline_after` shows every other member offline
  (it is the one cut off).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

RINGS = 2
# Free memory is news when it moved by a GiB or a tenth, whichever is more (placement
# needs it roughly; preflight asks the target itself; watchers see it exact): it moves all
# the time, and every member's news reaches every member.
MEMORY_NEWS_MIB = 1024
MEMORY_NEWS_PART = 0.1


@dataclass(frozen=True)
class State:
    """What is known of one member."""

    generation: float
    sequence: int
    offline: bool
    version: str
    live: dict[str, Any]

    @property
    def key(self) -> tuple[float, int, bool]:
        return (self.generation, self.sequence, self.offline)

    def newer_than(self, other: State | None) -> bool:
        return other is None or self.key > other.key

    def to_json(self) -> list[Any]:
        return [self.generation, self.sequence, int(self.offline), self.version, self.live]

    @classmethod
    def from_json(cls, data: Any) -> State:
        """:raise TypeError, ValueError: not a state."""
        generation, sequence, offline, version, live = data
        if not isinstance(live, dict):
            raise TypeError("live numbers are no mapping")
        return cls(float(generation), int(sequence), bool(offline), str(version), dict(live))


def moved(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether live numbers changed enough to be news: any of them but free memory, or free
    memory by MEMORY_NEWS_MIB or MEMORY_NEWS_PART of it, whichever is more."""
    for key in set(old) | set(new):
        if key == "memory_free_mib":
            before, now = old.get(key), new.get(key)
            if isinstance(before, int) and isinstance(now, int):
                if abs(before - now) >= max(MEMORY_NEWS_MIB, before * MEMORY_NEWS_PART):
                    return True
                continue
        if old.get(key) != new.get(key):
            return True
    return False


class View:
    """The newest state known of each member, this node's own included, and when each last
    changed here (what changed within the news window is passed on)."""

    def __init__(self, name: str, news_window: float) -> None:
        self.name = name
        self.news_window = news_window
        self.generation = time.time()
        self._states: dict[str, tuple[State, float]] = {}  # and when it changed (monotonic)
        self._digest: str | None = None
        self._lock = threading.Lock()

    # -- this node's own state ---------------------------------------------------------------

    def own(self, live: dict[str, Any]) -> tuple[State, bool]:
        """This node's state for these live numbers: a new sequence when they moved (or
        the first time); True when it is new."""
        version = str(live.get("facts_version"))
        with self._lock:
            held = self._states.get(self.name)
            if held is not None:
                state = held[0]
                if state.version == version and not moved(state.live, live):
                    return state, False
            sequence = held[0].sequence + 1 if held else 1
            state = State(self.generation, sequence, False, version, dict(live))
            self._put(self.name, state)
        return state, True

    def _refute(self, claim: State) -> State | None:
        """Someone says this node is offline (or knows a newer sequence of it): be newer.
        Returns the new state; None when there is nothing to refute (no state of this life
        yet, or a claim about an earlier life: this life's states are newer anyway)."""
        held = self._states.get(self.name)
        if held is None or claim.generation != self.generation:
            return None
        state = replace(held[0], sequence=max(held[0].sequence, claim.sequence) + 1)
        self._put(self.name, state)
        return state

    # -- what is known -------------------------------------------------------------------------

    def get(self, name: str) -> State | None:
        with self._lock:
            held = self._states.get(name)
        return held[0] if held else None

    def offline(self, name: str) -> bool:
        state = self.get(name)
        return state is not None and state.offline

    def names(self) -> set[str]:
        with self._lock:
            return set(self._states)

    def merge(self, entries: Any) -> list[tuple[str, State]]:
        """Take the states newer than those held; returns them. About this node itself, a
        claim is refuted (and this node's new state is returned). Malformed entries are
        ignored."""
        if not isinstance(entries, dict):
            return []
        fresh = []
        with self._lock:
            for name, data in entries.items():
                try:
                    state = State.from_json(data)
                except (TypeError, ValueError):
                    continue
                held = self._states.get(name)
                if not state.newer_than(held[0] if held else None):
                    continue
                if name == self.name:
                    refuted = self._refute(state)
                    if refuted is not None:
                        fresh.append((name, refuted))
                    continue
                self._put(name, state)
                fresh.append((name, state))
        return fresh

    def declare_offline(self, name: str) -> State | None:
        """Member `name` is offline (its watcher lost it): at the state held (a first key
        when none is), unless it is already."""
        with self._lock:
            held = self._states.get(name)
            if held is not None and held[0].offline:
                return None
            base = held[0] if held else State(0.0, 0, False, "", {})
            state = replace(base, offline=True)
            self._put(name, state)
        return state

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep) | {self.name}
        with self._lock:
            for name in set(self._states) - keep:
                del self._states[name]
                self._digest = None

    # -- what travels ----------------------------------------------------------------------------

    def news(self) -> dict[str, list[Any]]:
        """The states that changed here within the news window."""
        since = time.monotonic() - self.news_window
        with self._lock:
            return {n: s.to_json() for n, (s, at) in self._states.items() if at >= since}

    def entry(self, name: str) -> list[Any] | None:
        state = self.get(name)
        return state.to_json() if state else None

    def whole(self) -> dict[str, list[Any]]:
        with self._lock:
            return {n: s.to_json() for n, (s, _) in self._states.items()}

    def digest(self) -> str:
        """A digest of every member's key: equal on two nodes whose views agree."""
        with self._lock:
            if self._digest is None:
                keys = sorted((n, *s.key) for n, (s, _) in self._states.items())
                self._digest = hashlib.sha256(repr(keys).encode()).hexdigest()[:16]
            return self._digest

    def _put(self, name: str, state: State) -> None:
        self._states[name] = (state, time.monotonic())
        self._digest = None


def _place(ring: int, name: str) -> bytes:
    return hashlib.sha256(f"{ring}/{name}".encode()).digest()


class Rings:
    """Who watches whom: RINGS orderings of the members, each by a digest of `i/name`."""

    def __init__(self, rings: int = RINGS) -> None:
        self.rings = rings
        self._cache: tuple[tuple[str, ...], list[list[str]]] | None = None

    def _orders(self, members: Sequence[str]) -> list[list[str]]:
        key = tuple(sorted(members))
        if self._cache is None or self._cache[0] != key:
            orders = [sorted(key, key=lambda n: _place(i, n)) for i in range(self.rings)]
            self._cache = (key, orders)
        return self._cache[1]

    def subjects(self, name: str, members: Sequence[str]) -> list[str]:
        """The members `name` watches among `members` (which include it): its successor on
        each ring, or the next one there when that one is already chosen."""
        if name not in members:
            members = [*members, name]
        chosen: list[str] = []
        for order in self._orders(members):
            at = order.index(name)
            for step in range(1, len(order)):
                candidate = order[(at + step) % len(order)]
                if candidate not in chosen:
                    chosen.append(candidate)
                    break
        return [c for c in chosen if c != name]
