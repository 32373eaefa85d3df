"""The node agent's services: the state, the task runner, the node registry and cluster
membership of one node, used by the API routes and the server loop.

Must never import: cli, lab.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from corral import __version__
from corral.agent.api_models import JoinRequest, JoinResponse, RegistryModel, normalized_ip
from corral.agent.cluster_view import LastSeen
from corral.agent.etcd_membership import EtcdMembership
from corral.agent.facts_cache import FactsCache
from corral.agent.gossip_membership import GossipMembership
from corral.agent.settings import AgentSettings
from corral.api_errors import AccessDenied, Unreachable
from corral.client import AgentClient
from corral.cluster.maintenance import is_draining
from corral.cluster.peer_client import PeerPool
from corral.cluster.pki import ClusterCA, PkiPaths, fingerprint, make_key_and_csr
from corral.cluster.registry import Member, NodeRecord, NodeRegistry
from corral.cluster.tokens import (
    JoinRefused,
    check_token,
    consume_token,
    issue_token,
    parse_token,
)
from corral.database import Database
from corral.errors import ConflictError, CorralError, NotFoundError, UserInputError
from corral.hypervisors.bhyve.driver import BhyveDriver
from corral.hypervisors.bhyve.host import BhyveHost
from corral.hypervisors.qemu.accelerator import resolve_accelerator
from corral.hypervisors.qemu.driver import QemuDriver
from corral.migration.journal import MigrationJournal
from corral.migration.release import ReleaseBoard
from corral.model import VmSpec
from corral.tasks.runner import TaskKind, TaskRunner
from corral.tasks.store import TaskStore
from corral.vms.host_paths import check_host_paths, request_paths, spec_paths
from corral.vms.inventory import VmInventory, VmRecord
from corral.vms.service import VmService
from corral.vms.specs import VmRequest

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def choose_driver(settings: AgentSettings) -> QemuDriver | BhyveDriver:
    """The hypervisor the settings name; `auto` picks bhyve on FreeBSD and QEMU elsewhere."""
    kind = settings.hypervisor
    if kind == "auto":
        kind = "bhyve" if sys.platform.startswith("freebsd") else "qemu"
    if kind == "bhyve":
        return BhyveDriver(BhyveHost(settings.bhyve_root))
    return QemuDriver(
        resolve_accelerator(settings.accelerator), allowed_cpu_models=settings.cpu_models
    )


class NodeAgent:
    """Everything one node's agent owns."""

    def __init__(
        self,
        settings: AgentSettings,
        kinds: Callable[[NodeAgent], dict[str, TaskKind]],
        driver: QemuDriver | BhyveDriver | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.db = Database(settings.database_path)
        self.dirs = settings.directories
        self.dirs.ensure(self.name)
        self.driver = driver or choose_driver(settings)
        self.vms = VmService(self.name, VmInventory(self.db), self.driver, self.dirs)
        self.tasks = TaskStore(self.db, settings.task_log_dir)
        self.journal = MigrationJournal(self.db)
        self.releases = ReleaseBoard()  # arrived VMs whose source confirmed their disks
        self.last_vms = LastSeen()  # each member's VMs as last reported (cluster view)
        self.registry = NodeRegistry(self.db)
        self.pki = PkiPaths(settings.pki_dir)
        self.pool = PeerPool(self.pki)  # one keep-alive connection per member
        self.runner = TaskRunner(self.tasks, kinds(self), max_parallel=settings.max_parallel_tasks)
        self.on_member: Callable[[], None] = lambda: None
        self.facts_cache = FactsCache(self._compute_facts, self._live_facts)
        self._peers = ThreadPoolExecutor(8, thread_name_prefix="peer")
        self.gossip = GossipMembership(
            self.name,
            settings.heartbeat_interval,
            settings.offline_after,
            self.registry,
            self.facts_cache,
            self.pool,
            self._peers,
            self._follow_ca_holder,
        )
        self._next_beat = 0.0
        self.etcd: EtcdMembership | None = None
        if settings.state == "gossip":  # no news is good news: gossip vouches for members
            self.registry.vouch = self.gossip.vouch
        if settings.state == "etcd":
            self.etcd = EtcdMembership(
                self.name,
                settings.etcd_endpoints,
                settings.lease_ttl,
                self.pki,
                self.registry,
                owned_vms=lambda: self.vms.inventory.names_owned_by(self.name),
                live=self.facts_cache.live,
                full_facts=self.facts_cache.full,
            )

    # -- facts and status ------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """This node's facts, computed afresh (preflight, `GET /v1/facts`); the heartbeats
        carry the kept ones (facts_cache.py)."""
        return {**self.facts_cache.refresh(), **self._live_facts()}

    def _compute_facts(self) -> dict[str, Any]:
        facts = self.driver.facts().to_json()
        facts["storage"] = self.dirs.describe()
        facts["corral_version"] = __version__
        return facts

    def _live_facts(self) -> dict[str, Any]:
        """The numbers that move, read without a probe or a subprocess."""
        live: dict[str, Any] = {
            "vm_count": self.vms.inventory.count_owned_by(self.name),
            "registry_version": self.registry.version,
            "draining": self.draining,
        }
        free = self.driver.memory_free_mib()
        if free is not None:
            live["memory_free_mib"] = free
        return live

    def note_own_facts(self) -> None:
        """Record this node's facts now (its maintenance flag changed): `node list` here
        shows it at once; peers see it at their next heartbeat, preflight at once."""
        self.facts_cache.changed()
        if self.pki.member:
            self.registry.mark_seen(self.name, self.facts())

    @property
    def draining(self) -> bool:
        """In maintenance: takes no VM (cluster/maintenance.py)."""
        return is_draining(self.db)

    def cluster_status(self) -> dict[str, Any]:
        member = self.pki.member
        return {
            "node": self.name,
            "member": member,
            "holds_ca": self.pki.holds_ca_key,
            "ca_fingerprint": fingerprint(self.pki.ca_cert.read_bytes()) if member else None,
            "address": self.settings.address,
            "api_port": self.settings.api_port,
            "join_port": self.settings.join_port,
            "state": self.etcd.status() if self.etcd is not None else self.gossip.status(),
        }

    # -- cluster membership ----------------------------------------------------------------

    def _require_ca_key(self, to: str) -> None:
        if self.pki.holds_ca_key:
            return
        holder = self.registry.ca_holder()
        where = f"on {holder.name}, which holds it" if holder else "on the node that holds it"
        raise ConflictError(
            f"only the node holding the cluster CA's key may {to}: run this {where}"
        )

    def _require_member(self) -> None:
        if not self.pki.member:
            raise ConflictError(
                f"node {self.name} is not in a cluster yet: run 'corral cluster"
                " init' or 'corral node join'"
            )

    def init_cluster(self, cluster_name: str) -> dict[str, Any]:
        """Make the cluster's CA and this node's certificate; this node is its first member.

        :raise ConflictError: this node is already in a cluster.
        """
        ca = ClusterCA.create(self.pki, cluster_name)
        ca.issue_node(self.pki, self.name, self.settings.address)
        me = Member(
            self.name,
            self.settings.address,
            self.settings.api_port,
            time.time(),
            self.pki.node_fingerprint,
            holds_ca=True,
        )
        self.registry.admit(me)
        self.registry.mark_seen(self.name, self.facts())
        self.write_crl()
        self.on_member()
        return self.cluster_status()

    def write_crl(self) -> None:
        """On the CA holder with `crl_file` set: the cluster's revocation list there,
        naming every removed member's certificate this holder signed (etcd reads it at every
        new connection: a removed node cannot reach etcd with its certificate). Written
        whole and renamed into place, so a reader never sees half of it."""
        path = self.settings.crl_file
        if path is None or not self.pki.holds_ca_key:
            return
        revoked = self.registry.snapshot().revoked
        serials = [s for s in (self.pki.serial_of(fp) for fp in revoked) if s is not None]
        crl = ClusterCA.load(self.pki).revocation_list(serials)
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".{path.name}.new")
        fresh.write_bytes(crl)
        fresh.chmod(0o644)  # public: serial numbers and the CA's signature
        os.replace(fresh, path)

    def new_token(self, ttl_seconds: float) -> tuple[str, float]:
        """A single-use join token and its expiry.

        :raise ConflictError: this node does not hold the CA's key (the holder is named).
        """
        self._require_member()
        self._require_ca_key("make join tokens")
        ca = ClusterCA.load(self.pki)
        token, expires = issue_token(self.db, ca.fingerprint, ttl_seconds)
        return str(token), expires

    def join(self, address: str, token_text: str) -> list[str]:
        """Join the cluster whose member answers at `address` (HOST or HOST:JOINPORT).

        :raise JoinRefused: the token was refused, or the CA shown does not match it.
        """
        if self.pki.member:
            raise ConflictError(f"node {self.name} is already in a cluster")
        token = parse_token(token_text)
        host, _, port_text = address.partition(":")
        port = int(port_text) if port_text.isdigit() else self.settings.join_port
        base = f"https://{host}:{port}/v1/join"
        try:
            ca_pem = httpx.get(f"{base}/ca", verify=False, timeout=10).text.encode()
        except httpx.HTTPError as exc:
            raise Unreachable(f"no join endpoint answered at {host}:{port}: {exc}") from exc
        try:
            shown = fingerprint(ca_pem)
        except ValueError as exc:
            raise JoinRefused(f"{host}:{port} did not send a certificate") from exc
        if shown != token.ca_fingerprint:
            raise JoinRefused(
                f"the CA at {host}:{port} does not match the token's fingerprint; refusing to join"
            )
        key_pem, csr_pem = make_key_and_csr(self.name)
        request = JoinRequest(
            token_id=token.id,
            secret=token.secret,
            node_name=self.name,
            address=self.settings.address,
            api_port=self.settings.api_port,
            csr=csr_pem.decode(),
            facts=self.facts(),
        )
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        with AgentClient(url=f"https://{host}:{port}", ssl_context=ctx) as client:
            answer = JoinResponse.model_validate(
                client.post("/join", request.model_dump(mode="json"))
            )
        try:
            snapshot = answer.registry.snapshot()
        except ValueError as exc:
            raise JoinRefused(f"the cluster sent a malformed member list: {exc}") from exc
        mine = [m for m in snapshot.members if m.name == self.name]
        if not mine or mine[0].fingerprint != fingerprint(answer.cert.encode()):
            raise JoinRefused("the cluster's member list does not hold the certificate it sent")
        self.pki.save_node(answer.ca.encode(), answer.cert.encode(), key_pem)
        self.registry.apply(snapshot)
        self.registry.mark_seen(self.name, self.facts())
        self.on_member()
        return [m.name for m in snapshot.members]

    def accept_join(self, request: JoinRequest, came_from: str) -> JoinResponse:
        """The CA holder's side of a join: the token first (nothing is said to a caller
        without a valid one), then the name and the address, which must be no member's and
        must be the address the join came from; then sign, record and tell every member.

        :raise JoinRefused: the token is unknown, wrong, used or expired.
        :raise AccessDenied: the join claims an address it did not come from.
        :raise ConflictError: the name or the address is a member's already.
        """
        self._require_member()
        check_token(self.db, request.token_id, request.secret)
        self._require_ca_key("admit nodes")
        if normalized_ip(came_from) != request.address:
            raise AccessDenied(
                f"address: the join claims {request.address} but came from {came_from}"
            )
        ca = ClusterCA.load(self.pki)
        cert = ca.sign(request.csr.encode(), request.node_name, request.address)
        self.pki.record_issued(cert)  # its serial, should it ever be revoked
        new = Member(
            request.node_name,
            request.address,
            request.api_port,
            time.time(),
            fingerprint(cert),
        )
        # The member list refuses a name or an address that is a member's (409); the token is
        # spent only with the admission, so a refused join keeps it.
        with self.db.transaction() as conn:
            consume_token(self.db, request.token_id, request.secret, request.node_name, conn=conn)
            self.registry.admit(new, request.facts, conn=conn)
        self.push_registry(skip={self.name, new.name})
        snapshot = RegistryModel.of(self.registry.snapshot())
        return JoinResponse(ca=ca.cert_pem.decode(), cert=cert.decode(), registry=snapshot)

    def follow_registry(self, body: RegistryModel) -> bool:
        """Take the CA holder's newer member list; True when it was newer."""
        self._require_member()
        try:
            snapshot = body.snapshot()
        except ValueError as exc:
            raise UserInputError("revoked", str(exc)) from exc
        applied = self.registry.apply(snapshot)
        if applied:
            log.info("member list now at version %d", snapshot.version)
        return applied

    def remove_node(self, name: str, force: bool) -> None:
        """Remove a member and revoke its certificate, on the CA holder; every member hears
        of it now, or on its next contact with the CA holder.

        :raise ConflictError: not the CA holder; the node owns VMs; it is this node.
        """
        self._require_member()
        self.registry.get(name)
        self._require_ca_key("remove nodes")
        if name == self.name:
            raise ConflictError("the node holding the CA cannot remove itself")
        owned = self.vms.inventory.count_owned_by(name)
        if owned and not force:
            raise ConflictError(
                f"node {name} owns {owned} VM(s); migrate them away first or use --force"
            )
        if self.etcd is not None:
            # Its lease ends first: its member key and VM keys go, on every node at once.
            # etcd unreachable: the removal is refused whole (StateUnavailable).
            self.etcd.revoke_member(name, self.registry.get(name).fingerprint)
        self.registry.revoke(name)
        self.write_crl()
        self.push_registry(skip={self.name})

    def push_registry(self, skip: set[str]) -> None:
        """Send this CA holder's member list to every member (in parallel, best effort: one
        that misses it follows on its next heartbeat)."""
        body = RegistryModel.of(self.registry.snapshot()).model_dump(mode="json")

        def send(node: NodeRecord) -> None:
            try:
                with self.pool.client(node, timeout=5) as client:
                    client.request("PUT", "/registry", json=body)
            except CorralError as exc:
                log.warning("could not tell %s the member list: %s", node.name, exc)

        nodes = [n for n in self.registry.list() if n.name not in skip]
        list(self._peers.map(send, nodes))

    def nodes(self) -> list[dict[str, Any]]:
        """Every member with its online state as this node sees it."""
        now = time.time()
        out = []
        for node in self.registry.list():
            info = node.to_json()
            info["online"] = node.online(now, self.settings.offline_after)
            info["self"] = node.name == self.name
            out.append(info)
        return out

    # -- peers -----------------------------------------------------------------------------

    def fan_out(self, ask: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`ask` of every item at once, on the agent's peer threads, in order."""
        return list(self._peers.map(ask, items))

    def peer(self, name: str) -> AgentClient:
        """A client of member `name`.

        :raise NotFoundError: no such member.
        """
        self._require_member()
        node = self.registry.get(name)
        return self.pool.client(node)

    def heartbeat_once(self) -> float:
        """At each beat, reconcile VM records with what runs; then membership's turn
        (gossip: beat, declare lost subjects, push news; etcd: keep the lease). Returns
        the seconds until it wants to run again; `self.gossip.wake` runs it sooner."""
        now = time.monotonic()
        beat = now >= self._next_beat
        if beat:
            self._next_beat = now + self.settings.beat_interval
            for vm, recorded, observed in self.vms.reconcile():
                log.warning("VM %s was recorded %s but is %s", vm, recorded, observed)
        if not self.pki.member:
            return max(0.05, self._next_beat - time.monotonic())
        if self.etcd is not None:  # membership and liveness come from etcd's leases
            if beat:
                self.etcd.tick()
                holder = self.registry.ca_holder()
                member = self.etcd.state.members.get(holder.name) if holder else None
                if holder is not None and member is not None:
                    version = int((member.get("live") or {}).get("registry_version", 0))
                    self._follow_ca_holder(holder, version)
            return max(0.05, self._next_beat - time.monotonic())
        wait = self.gossip.tick(beat)
        return min(wait, max(0.05, self._next_beat - time.monotonic()))

    def answer_heartbeat(self, name: str, message: dict[str, Any]) -> dict[str, Any]:
        """A member's heartbeat to this node (gossip_membership.py)."""
        return self.gossip.answer(name, message)

    # -- host files a VM may use ------------------------------------------------------------

    def check_spec_paths(self, spec: VmSpec) -> None:
        """A spec from another member (a migration, an adoption): every host file it uses
        lies in this node's image or data directories, never in the agent's state.

        :raise UserInputError: naming the field."""
        s = self.settings
        allowed = (*s.allowed_image_dirs, self.dirs.data)
        check_host_paths(spec_paths(spec), allowed, s.private_dirs)

    def check_vm_request(self, request: VmRequest, from_peer: bool) -> None:
        """What a VM request may name: host files in the image directories when it comes
        from the local CLI; none at all from another member (it can make new disks).

        :raise AccessDenied: a member's request names a host file.
        :raise UserInputError: a local request names a file outside the image directories.
        """
        named = request_paths(request)
        if from_peer and named:
            field = named[0][0]
            raise AccessDenied(
                f"{field}: a VM created from another node may not name host files; run"
                f" 'corral vm create' on {self.name} itself, or give disks by size"
            )
        check_host_paths(named, self.settings.allowed_image_dirs, self.settings.private_dirs)

    def require_name_free(self, vm: str) -> None:
        """:raise ConflictError: a VM of that name exists on this node or an online member."""
        try:
            record = self.vms.record(vm)
            raise ConflictError(f"a VM named {vm!r} already exists (owned by {record.owner})")
        except NotFoundError:
            pass
        if not self.pki.member:
            return
        now = time.time()
        for node in self.registry.list():
            if node.name == self.name or not node.online(now, self.settings.offline_after):
                continue
            try:
                with self.pool.client(node, timeout=5) as client:
                    client.get(f"/vms/{vm}")
            except NotFoundError:
                continue
            except CorralError as exc:
                log.warning("cannot ask %s about VM %s: %s", node.name, vm, exc)
                continue
            raise ConflictError(f"a VM named {vm!r} already exists on {node.name}")

    def require_state(self, doing: str, vm: str | None = None) -> None:
        """:raise ConflictError: the state is in etcd and etcd cannot agree now: nothing
        new starts (a VM, a migration); or etcd says another node owns `vm`."""
        if self.etcd is None:
            return
        self.etcd.require_healthy(doing)
        if vm is not None:
            owner = self.etcd.owner(vm)
            if owner not in (None, self.name):
                raise ConflictError(f"cannot {doing}: etcd says {owner} owns {vm}")

    def create_vm(self, request: VmRequest) -> VmRecord:
        """Define a VM here. With etcd, its ownership key is made first (ConflictError when
        etcd cannot agree or another node owns the name), and removed if the creation fails:
        two nodes creating one name at once cannot both have it."""
        if self.etcd is None:
            return self.vms.create(request)
        self.etcd.require_healthy(f"create {request.name}")
        self.etcd.claim_new(request.name)
        try:
            return self.vms.create(request)
        except BaseException:
            self.etcd.release_new(request.name)
            raise

    def _follow_ca_holder(self, holder: NodeRecord, version: int) -> None:
        """The CA holder's member list is at `version` (its state says): fetch it when that
        is newer than this node's."""
        if holder.name == self.name or version <= self.registry.version:
            return
        try:
            with self.pool.client(holder, timeout=5) as client:
                self.follow_registry(RegistryModel.model_validate(client.get("/registry")))
        except CorralError as exc:
            log.warning("could not fetch the member list from %s: %s", holder.name, exc)

    def close(self) -> None:
        if self.etcd is not None:
            self.etcd.close()
        self._peers.shutdown(wait=False, cancel_futures=True)
        self.pool.close()
