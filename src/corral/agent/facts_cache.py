"""This node's facts as heartbeats carry them: the slow part cached and named by a digest,
the live part read cheaply at each beat.

Computing the facts runs the hypervisor's probes (`ip -j link`, sysctl, ...) and reads the
mount table; done at every heartbeat for every peer it made an idle cluster's cost grow with
the square of its size. Here it is done off the heartbeat path (`refresh`, every
FACTS_REFRESH_S by the agent's facts thread, and whenever something is known to have
changed), and a heartbeat carries the facts' version (a digest of their content: equal
across restarts when nothing changed) and the few numbers that move: free memory, VM count,
maintenance, the registry's version. A peer asks for the whole facts only when the version
it holds is not the current one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

FACTS_REFRESH_S = 30.0
LIVE_READ_S = 0.5  # the live numbers are read once per this, whatever asks
LIVE_KEYS = ("memory_free_mib", "vm_count", "draining", "registry_version")


def version_of(facts: dict[str, Any]) -> str:
    """A digest of everything in `facts` but the live numbers and each directory's free
    space: free space moves with every log line, and a new version makes every member fetch
    the whole facts (what needs it exact, a migration's preflight, asks the node itself)."""
    static = {k: v for k, v in facts.items() if k not in LIVE_KEYS and k != "facts_version"}
    storage = static.get("storage")
    if isinstance(storage, dict):
        static["storage"] = {
            role: {k: v for k, v in d.items() if k != "free_bytes"} if isinstance(d, dict) else d
            for role, d in storage.items()
        }
    return hashlib.sha256(json.dumps(static, sort_keys=True).encode()).hexdigest()[:16]


class FactsCache:
    def __init__(
        self, compute: Callable[[], dict[str, Any]], live: Callable[[], dict[str, Any]]
    ) -> None:
        self._compute, self._live = compute, live
        self._facts: dict[str, Any] | None = None
        self._live_cache: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, Any]:
        """Compute the facts afresh (slow: probes, subprocesses) and keep them."""
        facts = self._compute()
        facts["facts_version"] = version_of(facts)
        with self._lock:
            self._facts = facts
        return dict(facts)

    def full(self) -> dict[str, Any]:
        """The kept facts with the live numbers of now (computed once if never yet)."""
        with self._lock:
            kept = self._facts
        if kept is None:
            kept = self.refresh()
        return {**kept, **self._live()}

    def live(self) -> dict[str, Any]:
        """The version and the live numbers: what a heartbeat carries. Read at most every
        LIVE_READ_S (one beat's heartbeats and answers share one read), or afresh after
        `changed()`."""
        now = time.monotonic()
        with self._lock:
            kept, cached = self._facts, self._live_cache
        if cached is not None and now - cached[0] < LIVE_READ_S and kept is not None:
            return dict(cached[1])
        if kept is None:
            kept = self.refresh()
        live = {"facts_version": kept["facts_version"], **self._live()}
        with self._lock:
            self._live_cache = (now, live)
        return dict(live)

    def changed(self) -> None:
        """A live number changed here (the maintenance flag): the next read is fresh."""
        with self._lock:
            self._live_cache = None
