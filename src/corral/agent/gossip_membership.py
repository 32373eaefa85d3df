"""Membership by gossip (the default mode): this node's side of the protocol in gossip.py.

Each beat, this node publishes its own state (a new sequence only when it changed), sends
a heartbeat to the members it watches that it has not exchanged one with within the
interval (and to members whose facts it wants), and declares offline a watched member it
has exchanged nothing with for `detect_after`. Fresh news is pushed to its subjects at
once. Every heartbeat and answer carries: the sender's own state and live numbers, the
receiver's state as the sender holds it (so a member declared offline by mistake refutes
at its next contact), the news, and a digest of the sender's view.

What reaches the registry: a member's live numbers and facts when they change (or come
directly), `mark_gone` when it is declared offline, and, through `vouch`, that each member
not declared offline is online as of this node's last exchange with anyone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import httpx

from corral.agent.facts_cache import LIVE_KEYS, FactsCache
from corral.agent.gossip import Rings, State, View
from corral.cluster.peer_client import PeerPool
from corral.cluster.registry import NodeRecord, NodeRegistry
from corral.errors import CorralError, NotFoundError

log = logging.getLogger(__name__)

MISMATCHES_BEFORE_SYNC = 3  # exchanges whose digests differ before the whole view is asked
OFFLINE_RETRY_BEATS = 5  # a watched member known offline is tried once per this many beats


class GossipMembership:
    def __init__(
        self,
        name: str,
        interval: float,
        offline_after: float,
        registry: NodeRegistry,
        facts_cache: FactsCache,
        pool: PeerPool,
        peers: Executor,
        follow_ca_holder: Callable[[NodeRecord, int], None],
    ) -> None:
        self.name, self.interval, self.offline_after = name, interval, offline_after
        # A watcher declares its subject offline this long after their last exchange, so
        # that every node shows it offline within offline_after (the news takes a few
        # hops over kept connections: well under the margin).
        self.detect_after = max(2 * interval, offline_after - max(0.5, 0.1 * offline_after))
        self.registry, self.facts_cache, self.pool, self._peers = (
            registry,
            facts_cache,
            pool,
            peers,
        )
        self._follow_ca_holder = follow_ca_holder
        self.view = View(name, news_window=offline_after)
        self._rings, self._full_rings = Rings(), Rings()
        self.wake = threading.Event()  # news to push, or a deadline moved: tick now
        self._push = False
        self._ok: dict[str, float] = {}  # member -> last exchange with it (either way)
        self._tried: dict[str, float] = {}  # member -> this node's last heartbeat to it
        self._contact: float | None = None  # this node's last exchange with anyone
        self._watching: dict[str, float] = {}  # subject -> since when it is watched here
        self._declared: dict[str, State] = {}  # subject -> what this node declared of it
        self._asking: set[str] = set()  # members whose facts held here are not current
        self._send_facts: dict[str, bool] = {}  # member -> it asked for the whole facts
        self._mismatch: dict[str, int] = {}  # subject -> exchanges with differing views
        self._need_view: set[str] = set()  # subjects to ask for their whole view
        self._unreachable: set[str] = set()  # members this node's last heartbeat failed
        self._beats = 0
        self.counts = {"sent": 0, "answered": 0, "views_sent": 0, "declared": 0, "news": 0}
        self._incomplete = True  # members this node knows no state of: ask for a whole view

    # -- the beat ------------------------------------------------------------------------------

    def tick(self, beat: bool) -> float:
        """A beat (`beat`), or an early wake: declare lost subjects, push news. Returns
        the seconds until a subject's deadline (at most one interval)."""
        self.wake.clear()
        members: list[NodeRecord] | None = None
        if beat:
            members = self._beat()
        now = time.monotonic()
        self._detect(now)
        if self._push:
            self._push = False
            by_name = {n.name: n for n in (members or self.registry.list())}
            targets = [by_name[s] for s in self._watching if s in by_name]
            list(self._peers.map(self._exchange, targets))
        deadlines = [
            max(self._ok.get(s, 0.0), t) + self.detect_after for s, t in self._watching.items()
        ]  # those already past were just declared (or are refuted): nothing to wake for
        soonest = min([now + self.interval, *(d for d in deadlines if d > now)])
        return max(0.05, soonest - time.monotonic())

    def _beat(self) -> list[NodeRecord]:
        live = self.facts_cache.live()
        _, new = self.view.own(live)
        if new:
            self.counts["news"] += 1
            self._push = True
        with contextlib.suppress(NotFoundError):  # not in the member list (yet): a join
            held, *_ = self.registry.held(self.name)
            if held != live["facts_version"]:
                self.registry.mark_seen(self.name, self.facts_cache.full())
            else:
                self.registry.mark_alive(self.name, live)
        members = self.registry.list()
        names = {n.name for n in members}
        self.pool.forget(names)  # removed members: close their links
        self.view.forget(names)
        for table in (self._ok, self._tried, self._watching, self._declared, self._mismatch):
            for gone in set(table) - names:
                del table[gone]
        holder = next((n for n in members if n.holds_ca and n.name != self.name), None)
        known = self.view.get(holder.name) if holder else None
        if holder is not None and known is not None and not known.offline:
            self._follow_ca_holder(holder, int(known.live.get("registry_version", 0)))
        if self.name not in names:
            return members
        self._beats += 1
        now = time.monotonic()
        online = [n for n in names if not self.view.offline(n)]
        subjects = self._rings.subjects(self.name, online)
        self._watching = {s: self._watching.get(s, now) for s in subjects}
        self._incomplete = bool(names - self.view.names())
        last = {s: max(self._ok.get(s, 0.0), self._tried.get(s, 0.0)) for s in subjects}
        due = {s for s in subjects if now - last[s] >= 0.9 * self.interval} | self._asking
        # A member this node failed to reach is tried by this node itself at every beat,
        # even while it calls here (only a heartbeat from here shows it reachable again).
        due |= self._unreachable & names
        if self._push:  # news to push: every subject hears it with this beat
            self._push = False
            due |= set(subjects)
        if self._beats % OFFLINE_RETRY_BEATS == 0:  # a member back from away is found
            watched = self._full_rings.subjects(self.name, sorted(names))
            due |= {s for s in watched if self.view.offline(s)}
        list(self._peers.map(self._exchange, [n for n in members if n.name in due]))
        return members

    def _detect(self, now: float) -> None:
        """Declare offline each watched member this node has exchanged nothing with for
        detect_after, unless it refuted this node's earlier claim (then only the link
        from here is bad: it stays unreachable here, and its other watchers watch it), or
        this node is not exchanging heartbeats with anyone else now either (then it is the
        one cut off: it shows every peer offline here, and claims nothing of them)."""
        for subject, since in list(self._watching.items()):
            if now - max(self._ok.get(subject, 0.0), since) <= self.detect_after:
                continue
            others = (t for m, t in list(self._ok.items()) if m != subject)
            if max(others, default=0.0) < now - 2 * self.interval:
                continue  # all its links went quiet together: it is this node's own
            held = self.view.get(subject)
            claimed = self._declared.get(subject)
            if held is not None and claimed is not None and held.newer_than(claimed):
                continue
            state = self.view.declare_offline(subject)
            if state is None:
                continue
            log.info("%s: no heartbeat for %.1f s; declared offline", subject, self.detect_after)
            self._declared[subject] = state
            self.counts["declared"] += 1
            self._fresh(subject, state)

    # -- exchanging -------------------------------------------------------------------------------

    def _message(self, peer: str) -> dict[str, Any]:
        """What any heartbeat or answer to `peer` carries."""
        own = self.view.get(self.name)
        message: dict[str, Any] = {"live": self.facts_cache.live(), "digest": self.view.digest()}
        if own is not None:
            message["state"] = own.to_json()
        news = self.view.news()
        if news:
            message["news"] = news
        you = self.view.entry(peer)
        if you is not None:
            message["you"] = you
        return message

    def _exchange(self, node: NodeRecord) -> None:
        """One heartbeat to `node` and its answer."""
        timeout = min(2.0, self.interval * 2)
        body = self._message(node.name)
        body["known"] = self._held_version(node.name)
        if self._send_facts.get(node.name, True):
            body["facts"] = self.facts_cache.full()
        if node.name in self._need_view or self._incomplete:
            body["need_view"] = True
        self._tried[node.name] = time.monotonic()
        self.counts["sent"] += 1
        try:
            with self.pool.client(node, timeout=timeout) as client:
                answer = client.post("/heartbeat", body)
            self._unreachable.discard(node.name)
            self._need_view.discard(node.name)
            self.take(node.name, answer)
            self._send_facts[node.name] = bool(answer.get("need_facts"))
            self._compare(node.name, answer.get("digest"))
        except (CorralError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            log.debug("heartbeat to %s failed: %s", node.name, exc)
            self._unreachable.add(node.name)

    def _compare(self, peer: str, digest: Any) -> None:
        """The peer's view differs from this one's exchange after exchange (news lost):
        ask for its whole view next time."""
        if digest == self.view.digest():
            self._mismatch.pop(peer, None)
            return
        self._mismatch[peer] = self._mismatch.get(peer, 0) + 1
        if self._mismatch[peer] >= MISMATCHES_BEFORE_SYNC:
            self._mismatch.pop(peer)
            self._need_view.add(peer)

    def answer(self, name: str, message: dict[str, Any]) -> dict[str, Any]:
        """A member's heartbeat to this node: take its news, answer with this node's."""
        need = self.take(name, message)
        self.counts["answered"] += 1
        answer = self._message(name)
        answer["need_facts"] = need
        if message.get("known") != answer["live"]["facts_version"]:
            answer["facts"] = self.facts_cache.full()
        if message.get("need_view"):
            answer["view"] = self.view.whole()
            self.counts["views_sent"] += 1
        return answer

    def take(self, name: str, message: dict[str, Any]) -> bool:
        """What member `name` sent (a heartbeat or an answer): its state and live numbers,
        its facts if it sent them, the news, this node's state as it holds it; True when
        its facts held here are not its current ones (ask for them).

        :raise NotFoundError: `name` is no member."""
        now = time.monotonic()
        self._ok[name] = self._contact = now
        own = message.get("state")
        entries: dict[str, Any] = dict(message.get("view") or {})
        entries.update(message.get("news") or {})
        if own is not None:
            entries[name] = own
        if message.get("you") is not None:
            entries[self.name] = message["you"]
        for fresh, state in self.view.merge(entries):
            if fresh != name:
                self._fresh(fresh, state)
        facts = message.get("facts")
        if isinstance(facts, dict) and name not in self._unreachable:
            self.registry.mark_seen(name, facts)
            self._asking.discard(name)
            return False
        live = dict(message.get("live") or {})
        return self._alive(name, str(live.get("facts_version")), live)

    def _fresh(self, name: str, state: State) -> None:
        """A state newer than the one held came (or was made here): record it, pass it on."""
        self.counts["news"] += 1
        self._push = True
        self.wake.set()
        if name == self.name:
            return  # a refutation: this node's new state goes out with the push
        with contextlib.suppress(NotFoundError):  # not (or no longer) a member here
            if state.offline:
                self.registry.mark_gone(name)
                self._asking.discard(name)
            else:
                self._alive(name, state.version, state.live)

    def _alive(self, name: str, version: str, live: dict[str, Any]) -> bool:
        """Member `name` is alive with these numbers; True (and its facts wanted) when the
        version held here is not `version`. Not noted while this node cannot reach it."""
        held = self._held_version(name)
        numbers = {k: live[k] for k in LIVE_KEYS if k in live}
        if name not in self._unreachable:
            self.registry.mark_alive(name, numbers)
        stale = held != version
        if stale:
            self._asking.add(name)
        return stale

    def _held_version(self, name: str) -> str | None:
        held, *_ = self.registry.held(name)
        return held

    # -- what the registry asks --------------------------------------------------------------

    def vouch(self, name: str) -> float | None:
        """Since when (wall clock) this node holds member `name` online: as of its last
        exchange with anyone, unless `name` is declared offline, unknown, or unreachable
        from here."""
        if name == self.name or name in self._unreachable or self._contact is None:
            return None
        state = self.view.get(name)
        if state is None or state.offline:
            return None
        return time.time() - (time.monotonic() - self._contact)

    def status(self) -> dict[str, Any]:
        return {
            "mode": "gossip",
            "watching": sorted(self._watching),
            "unreachable": sorted(self._unreachable),
            "heartbeats": dict(self.counts),
        }
