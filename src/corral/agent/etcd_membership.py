"""This node's part of the cluster state in etcd (`state = "etcd"`), in place of gossip.

Every heartbeat interval, on the agent's heartbeat thread:

1. **Its lease**: granted once (TTL = the offline time), renewed with one keep-alive (etcd's
   leader renews it without a Raft write). Renewal says -1 when the lease already expired (a
   partition longer than the TTL): a new one is granted and this node's keys are made again.
2. **Its member key** (`members/<node>`, attached to the lease): its live numbers and facts
   version, written only when they changed; its whole facts (`facts/<node>`) only when their
   version changed.
3. **Its VMs' ownership keys** (`vms/<vm>`, attached to the lease): created for each VM this
   node's records say it owns, if absent; never taken from another owner. A migration's
   target takes a key over with a compare-and-swap from the source's name (`claim_from`)
   before it resumes the VM.
4. **The members' keys**: one small read of etcd's revision; when it moved, only the member
   keys changed since (etcd's `min_mod_revision`) and their count (a key that went shows
   there: then all are read again), and the facts of a member whose version changed. A
   member whose key is there is online; one whose key went (its lease expired, or was
   revoked on removal) is offline at once, on every node.

A node that cannot reach etcd with a majority behind it stops renewing: after the TTL its
keys are gone everywhere, and its own records age out here (nothing marks its peers alive).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.cluster.etcd_store import (
    RETRY_FOR,
    Entry,
    EtcdStore,
    StateUnavailable,
    dumps,
    parse_endpoints,
)
from corral.cluster.pki import PkiPaths, fingerprint
from corral.cluster.registry import NodeRegistry
from corral.errors import ConflictError, NotFoundError

log = logging.getLogger(__name__)

MEMORY_STEP_MIB = 256  # free memory is published in steps: no write for every page freed


def open_store(endpoints: list[tuple[str, int]], pki: PkiPaths, timeout: float) -> EtcdStore:
    """The cluster's keys in etcd, reached with this node's certificate. They live under
    the cluster CA's fingerprint: two clusters may share one etcd."""
    cluster = fingerprint(pki.ca_cert.read_bytes()).replace(":", "")[:16].lower()
    return EtcdStore(endpoints, pki.ca_cert, pki.node_cert, pki.node_key, cluster, timeout)


@dataclass
class EtcdState:
    """What this node last knew of etcd (shown by `cluster status` and the metrics)."""

    reachable: bool = False
    error: str | None = None
    lease: int | None = None
    renewed: float = 0.0  # monotonic time of the last successful grant or renewal
    ok_at: float = 0.0  # monotonic time of the last look at etcd that fully succeeded
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> member key


class EtcdMembership:
    def __init__(
        self,
        name: str,
        endpoints: tuple[str, ...],
        ttl: int,
        pki: PkiPaths,
        registry: NodeRegistry,
        owned_vms: Callable[[], list[str]],
        live: Callable[[], dict[str, Any]],
        full_facts: Callable[[], dict[str, Any]],
        timeout: float = 2.0,
    ) -> None:
        self.name = name
        self.endpoints = parse_endpoints(list(endpoints))
        self.ttl = ttl
        self.pki = pki
        self.registry = registry
        self.owned_vms = owned_vms
        self.live = live
        self.full_facts = full_facts
        self.timeout = timeout
        self.state = EtcdState()
        self._store: EtcdStore | None = None
        self._written: str | None = None  # the member key's value last written
        self._facts_written: str | None = None  # the facts version last written
        self._claimed: dict[str, int] = {}  # VM -> the lease its key was made with
        self._warned: set[str] = set()
        self._revision = -1
        self.removed = False
        self._lock = threading.Lock()

    # -- the store -------------------------------------------------------------------------

    def store(self) -> EtcdStore:
        """:raise ConflictError: this node has no cluster certificate yet."""
        if not self.pki.member:
            raise ConflictError(f"node {self.name} is not in a cluster yet")
        if self._store is None:
            self._store = open_store(self.endpoints, self.pki, self.timeout)
        return self._store

    def lease_valid(self) -> bool:
        """This node's lease is alive as far as its own clock can tell (renewed within the
        TTL, less a second for the clocks' drift and the request's time)."""
        s = self.state
        return s.lease is not None and time.monotonic() - s.renewed < self.ttl - 1.0

    # -- every interval --------------------------------------------------------------------

    def tick(self) -> None:
        if not self.pki.member or self.removed:
            return
        with self._lock:
            try:
                store = self.store()
                lease = self._keep_lease(store)
                if lease is None:  # removed from the cluster
                    return
                self._publish(store, lease)
                self._claim_vms(store, lease)
                self._read_members(store)
                if not self.removed:
                    self.state.reachable, self.state.error = True, None
                    self.state.ok_at = time.monotonic()
            except StateUnavailable as exc:
                # One failed look is not etcd lost: a leader's election (one member killed)
                # fails requests for about a second. Unreachable once no look succeeded for
                # half a lease plus the store's retries (the lease itself outlives an
                # election: etcd extends leases when a new leader takes over).
                if self.state.error is None:
                    log.warning("etcd: %s", exc)
                self.state.error = str(exc)
                grace = self.ttl / 2 + RETRY_FOR
                self.state.reachable = time.monotonic() - self.state.ok_at < grace

    def _keep_lease(self, store: EtcdStore) -> int | None:
        """This node's live lease (renewed, or new); None when it was removed."""
        lease = self.state.lease
        if lease is not None and store.keep_alive(lease) > 0:
            self.state.renewed = time.monotonic()
            return lease
        if self._was_removed(store):  # a removal revokes the lease: never take a new one
            return None
        if lease is not None:
            log.warning("etcd: lease %x expired; taking a new one", lease)
        lease = store.grant(self.ttl)
        self.state.lease, self.state.renewed = lease, time.monotonic()
        self._written, self._facts_written, self._claimed = None, None, {}
        return lease

    def _publish(self, store: EtcdStore, lease: int) -> None:
        live = dict(self.live())
        free = live.get("memory_free_mib")
        if isinstance(free, int):
            live["memory_free_mib"] = free - free % MEMORY_STEP_MIB
        version = str(live.get("facts_version"))
        if self._facts_written != version:
            store.put(f"facts/{self.name}", dumps(self.full_facts()))
            self._facts_written = version
        value = dumps({"lease": lease, "live": live})
        if value != self._written:
            store.put(f"members/{self.name}", value, lease)
            self._written = value

    def _claim_vms(self, store: EtcdStore, lease: int) -> None:
        owned = set(self.owned_vms())
        for vm in sorted(owned):
            if self._claimed.get(vm) == lease:
                continue
            if store.create(f"vms/{vm}", self.name, lease):
                self._claimed[vm] = lease
                continue
            entry = store.get(f"vms/{vm}")
            if entry is not None and entry.value == self.name:
                # Ours under an older lease (this agent restarted): move it to this one.
                if store.swap(f"vms/{vm}", self.name, self.name, lease):
                    self._claimed[vm] = lease
            elif entry is not None and vm not in self._warned:
                self._warned.add(vm)
                log.warning("VM %s is recorded here but etcd says %s owns it", vm, entry.value)
        for vm in set(self._claimed) - owned:
            # Deleted here, or moved away (then the key is the target's and stays).
            store.delete_if(f"vms/{vm}", self.name)
            del self._claimed[vm]

    def _read_members(self, store: EtcdStore) -> None:
        revision = store.revision()
        if revision != self._revision:
            if self._was_removed(store):
                return
            members = self._changed_members(store)
            gone = set(self.state.members) - set(members)
            self.state.members = members
            self._revision = revision
            for name in gone:
                with contextlib.suppress(NotFoundError):
                    self.registry.mark_gone(name)
            self._take_facts(store, members)
        for name, member in self.state.members.items():
            with contextlib.suppress(NotFoundError):  # not (yet) in this node's member list
                self.registry.mark_alive(name, dict(member.get("live") or {}))

    def _changed_members(self, store: EtcdStore) -> dict[str, dict[str, Any]]:
        """The member keys as of now, reading only those changed since the last look (a
        key or two, whatever the cluster's size). A member whose key went shows in the
        count only: then (rarely: a lease ended) every key is read again."""
        first = self._revision < 0
        _, entries = store.get_prefix("members/", None if first else self._revision + 1)
        members = _parsed(entries, {} if first else self.state.members)
        if not first and store.count_prefix("members/") != len(members):
            members = _parsed(store.get_prefix("members/")[1], {})
        return members

    def _was_removed(self, store: EtcdStore) -> bool:
        """This node's certificate was removed from the cluster: it ends its lease (its keys
        go) and writes nothing more."""
        entry = store.get(f"revoked/{self.name}")
        if entry is None or entry.value != self.pki.node_fingerprint:
            return False
        log.error("etcd: this node was removed from the cluster; it leaves etcd")
        if self.state.lease is not None:
            with contextlib.suppress(StateUnavailable):
                store.revoke(self.state.lease)
        self.removed = True
        self.state.lease, self.state.members = None, {}
        self.state.error = "this node was removed from the cluster"
        return True

    def _take_facts(self, store: EtcdStore, members: dict[str, dict[str, Any]]) -> None:
        for name, member in members.items():
            version = (member.get("live") or {}).get("facts_version")
            with contextlib.suppress(NotFoundError):
                held, *_ = self.registry.held(name)
                if held == version:
                    continue
                entry = store.get(f"facts/{name}")
                if entry is not None:
                    with contextlib.suppress(ValueError):
                        self.registry.mark_seen(name, json.loads(entry.value))

    # -- ownership -------------------------------------------------------------------------

    def owner(self, vm: str) -> str | None:
        """Who owns `vm` in etcd now (a linearizable read).

        :raise StateUnavailable: etcd cannot say."""
        entry = self.store().get(f"vms/{vm}")
        return entry.value if entry is not None else None

    def claim_from(self, vm: str, source: str) -> None:
        """Take `vm` over from `source`: the key moves to this node and its lease in one
        compare-and-swap, or not at all.

        :raise ConflictError: the key does not hold `source` (another node owns it, or the
            source's lease expired), or this node's lease is not alive.
        :raise StateUnavailable: etcd has no majority now: no one can take it."""
        with self._lock:
            store = self.store()
            lease = self.state.lease
            if lease is None or not self.lease_valid():
                raise ConflictError(f"{self.name} holds no live etcd lease: it may not run {vm}")
            if store.swap(f"vms/{vm}", source, self.name, lease):
                self._claimed[vm] = lease
                return
            entry = store.get(f"vms/{vm}")
            held = f"is owned by {entry.value}" if entry else "has no owner (its lease expired)"
        raise ConflictError(f"etcd refused the handoff of {vm}: it {held}, not {source}")

    def claim_new(self, vm: str) -> None:
        """A VM about to be created here: its key is made now (not at the next beat), so
        two nodes creating one name at once cannot both have it.

        :raise ConflictError: etcd says another node owns a VM of that name, or this node
            holds no live lease.
        :raise StateUnavailable: etcd cannot say."""
        with self._lock:
            store = self.store()
            lease = self.state.lease
            if lease is None or not self.lease_valid():
                raise ConflictError(f"{self.name} holds no live etcd lease: it may not create {vm}")
            if store.create(f"vms/{vm}", self.name, lease):
                self._claimed[vm] = lease
                return
            entry = store.get(f"vms/{vm}")
        if entry is not None and entry.value != self.name:
            raise ConflictError(f"etcd says {entry.value} owns a VM named {vm!r}")

    def release_new(self, vm: str) -> None:
        """Undo `claim_new` (the VM could not be created): its key goes. Best effort: the
        next beat deletes a key this node made for a VM it does not record."""
        with self._lock, contextlib.suppress(StateUnavailable):
            self.store().delete_if(f"vms/{vm}", self.name)
            self._claimed.pop(vm, None)

    def give_back(self, vm: str, source: str) -> None:
        """Undo `claim_from` (the VM could not run here after all): the key names the
        source again, attached to the source's lease as its member key says. Best effort:
        `corral migrate VM --recover` on the source settles what it could not."""
        with self._lock:
            try:
                store = self.store()
                member = store.get(f"members/{source}")
                lease = int(json.loads(member.value).get("lease", 0)) if member else 0
                if lease and store.swap(f"vms/{vm}", self.name, source, lease):
                    self._claimed.pop(vm, None)
                    return
            except (StateUnavailable, ValueError) as exc:
                log.warning("etcd: could not give %s back to %s: %s", vm, source, exc)
                return
        log.warning("etcd: could not give %s back to %s (its lease is gone)", vm, source)

    def may_resume(self, vm: str) -> tuple[bool, str]:
        """Whether this node may run its own copy of `vm` again (after a failed migration):
        etcd says this node owns it; or etcd cannot be asked, and this node's lease is alive
        by its own clock (no one can have taken the key: that needs the lease gone or this
        node's name in a swap). Never once the lease expired."""
        try:
            owner = self.owner(vm)
        except StateUnavailable as exc:
            if self.lease_valid():
                return True, f"etcd unreachable ({exc}); this node's lease is still alive"
            return False, f"etcd unreachable and this node's lease expired ({exc})"
        if owner == self.name:
            return True, "etcd says this node owns it"
        return False, f"etcd says {owner or 'no node'} owns it, not {self.name}"

    def require_healthy(self, doing: str) -> None:
        """:raise ConflictError: etcd cannot agree now (no majority, or no lease here):
        nothing new may start."""
        if not (self.state.reachable and self.lease_valid()):
            self._renew_now()  # ask etcd rather than guess from the clock (a slow beat)
        if self.state.reachable and self.lease_valid():
            return  # (also within the grace after one failed look: an election, say)
        why = self.state.error or "this node holds no live lease"
        raise ConflictError(f"cannot {doing}: the cluster state (etcd) is unavailable: {why}")

    def _renew_now(self) -> None:
        """One renewal of this node's lease, now: the beat may be late (an election slowed
        it, or the host is busy) while the lease is alive in etcd."""
        with self._lock:
            lease = self.state.lease
            if lease is None or self.removed:
                return
            with contextlib.suppress(StateUnavailable):
                if self.store().keep_alive(lease) > 0:
                    now = time.monotonic()
                    self.state.renewed = self.state.ok_at = now
                    self.state.reachable = True

    def revoke_member(self, name: str, fingerprint: str | None) -> None:
        """A removed member: its lease ends, so its member key and every VM key it held go;
        its certificate is recorded as removed, so its agent (which reads it at its next
        tick) stops writing to etcd.

        :raise StateUnavailable: etcd cannot do it now (the removal is refused whole)."""
        store = self.store()
        if fingerprint:
            store.put(f"revoked/{name}", fingerprint)
        entry = store.get(f"members/{name}")
        if entry is not None and entry.lease:
            store.revoke(entry.lease)
        store.delete(f"members/{name}")
        store.delete(f"facts/{name}")

    def status(self) -> dict[str, Any]:
        s = self.state
        return {
            "mode": "etcd",
            "endpoints": [f"https://{h}:{p}" for h, p in self.endpoints],
            "reachable": s.reachable,
            "lease": f"{s.lease:x}" if s.lease is not None else None,
            "lease_alive": self.lease_valid(),
            "error": s.error,
        }

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _parsed(entries: list[Entry], known: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`known` members with these member keys read over them."""
    members = dict(known)
    for entry in entries:
        with contextlib.suppress(ValueError):
            members[entry.key.rsplit("/", 1)[1]] = json.loads(entry.value)
    return members
