"""The lab's plan: which namespaces, bridges, links, addresses and directories a lab of N
nodes is made of, and the `ip` commands that build it. Pure: computing a plan touches
nothing, so it is unit-tested without root.

Topology (one fabric namespace acts as the switch of both networks)::

    corral-fabric:  bridge "mig"  <- veth m-nodeI -> corral-nodeI: mig0  (migration address)
                    bridge "guest"<- veth g-nodeI -> corral-nodeI: uplink0 in bridge br0
                                  <- veth g-client -> corral-client: eth0 (client address)

Guests' taps join br0 in their node, so every guest and the client share one L2 segment.
No address is ever configured outside the lab's own namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from corral.errors import UserInputError

MAX_NODES = 50
FABRIC_MIGRATION_BRIDGE = "mig"
FABRIC_GUEST_BRIDGE = "guest"
NODE_GUEST_BRIDGE = "br0"
NODE_MIGRATION_IFACE = "mig0"
NODE_UPLINK_IFACE = "uplink0"
CLIENT_IFACE = "eth0"
CLIENT_HOST = 254  # the client's host number on the guest network
STORAGE_KINDS = ("dir", "glusterfs", "local")
STORAGE_HOST = 250  # the storage namespace's host number on the migration network
STATE_KINDS = ("gossip", "etcd")
ETCD_MEMBERS = 3  # --state etcd: a majority survives one member lost
ETCD_HOST = 240  # etcd member i (1..3) is host ETCD_HOST + i on the migration network
DEFAULT_MIGRATION_NET = IPv4Network("10.210.0.0/24")
DEFAULT_GUEST_NET = IPv4Network("10.211.0.0/24")


@dataclass(frozen=True)
class LabConfig:
    """What a person can choose about a lab; everything else follows from it."""

    nodes: int = 2
    prefix: str = "corral"
    migration_net: IPv4Network = DEFAULT_MIGRATION_NET
    guest_net: IPv4Network = DEFAULT_GUEST_NET
    root: Path = Path("/var/lib/corral-lab")
    # "dir": one directory all nodes share; "glusterfs": a GlusterFS volume mounted there;
    # "local": each node its own VM directories (nothing shared: local disks).
    storage: str = "dir"
    # "gossip": the agents agree among themselves; "etcd": a 3-member etcd cluster in the
    # lab's own namespaces holds membership, liveness and VM ownership.
    state: str = "gossip"

    def validate(self) -> None:
        """:raise UserInputError: naming the setting that is out of range."""
        if not 1 <= self.nodes <= MAX_NODES:
            raise UserInputError("nodes", f"must be between 1 and {MAX_NODES}, not {self.nodes}")
        if not self.prefix.isascii() or not self.prefix.replace("-", "").isalnum():
            raise UserInputError("prefix", "letters, digits and '-' only")
        if len(self.prefix) > 20:
            raise UserInputError("prefix", "at most 20 characters")
        for name, net in (("migration-net", self.migration_net), ("guest-net", self.guest_net)):
            if net.num_addresses < 256:
                raise UserInputError(name, f"{net} is smaller than a /24")
        if self.migration_net.overlaps(self.guest_net):
            raise UserInputError("guest-net", f"{self.guest_net} overlaps {self.migration_net}")
        if not self.root.is_absolute():
            raise UserInputError("root", f"{self.root} is not an absolute path")
        if self.state not in STATE_KINDS:
            raise UserInputError("state", f"{self.state!r} is not one of " + ", ".join(STATE_KINDS))
        if self.storage not in STORAGE_KINDS:
            raise UserInputError(
                "storage", f"{self.storage!r} is not one of " + ", ".join(STORAGE_KINDS)
            )

    def to_json(self) -> dict[str, object]:
        return {
            "nodes": self.nodes,
            "prefix": self.prefix,
            "root": str(self.root),
            "migration_net": str(self.migration_net),
            "guest_net": str(self.guest_net),
            "storage": self.storage,
            "state": self.state,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LabConfig:
        return cls(
            nodes=int(str(data["nodes"])),
            prefix=str(data["prefix"]),
            migration_net=IPv4Network(str(data["migration_net"])),
            guest_net=IPv4Network(str(data["guest_net"])),
            root=Path(str(data["root"])),
            storage=str(data.get("storage", "dir")),
            state=str(data.get("state", "gossip")),
        )


@dataclass(frozen=True)
class LabNode:
    """One node of the lab: its namespace, migration address and local directory."""

    name: str
    index: int
    netns: str
    migration_address: IPv4Interface
    local_dir: Path
    bridge: str = NODE_GUEST_BRIDGE


@dataclass(frozen=True)
class VethLink:
    """A veth pair from the fabric's bridge into another namespace."""

    fabric_end: str
    fabric_bridge: str
    netns: str
    far_end: str
    far_bridge: str | None = None
    address: IPv4Interface | None = None


@dataclass(frozen=True)
class LabPlan:
    """Everything a lab is made of."""

    config: LabConfig
    fabric_netns: str
    client_netns: str
    client_address: IPv4Interface
    nodes: tuple[LabNode, ...]
    links: tuple[VethLink, ...]
    shared_dir: Path
    state_file: Path
    directories: tuple[Path, ...] = field(default=())
    storage_netns: str = ""
    storage_address: IPv4Interface | None = None
    etcd: tuple[tuple[str, IPv4Interface], ...] = ()  # (namespace, address) per etcd member

    @property
    def namespaces(self) -> tuple[str, ...]:
        storage = (self.storage_netns,) if self.storage_netns else ()
        etcd = tuple(ns for ns, _ in self.etcd)
        return (
            self.fabric_netns,
            self.client_netns,
            *(n.netns for n in self.nodes),
            *storage,
            *etcd,
        )

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"https://{address.ip}:2379" for _, address in self.etcd]

    @property
    def etcd_crl(self) -> Path:
        """The cluster's revocation list: node1's agent (the CA holder) writes it, the lab's
        etcd members read it at every new connection."""
        return self.config.root / "etcd" / "crl.der"

    def storage_dir(self, node: LabNode) -> Path:
        """The parent of `node`'s data, config and system directories: the shared one, or
        with local storage the node's own."""
        return node.local_dir / "storage" if self.config.storage == "local" else self.shared_dir

    def node(self, name: str) -> LabNode:
        """:raise UserInputError: no node of that name in this lab."""
        for node in self.nodes:
            if name in (node.name, node.netns):
                return node
        names = ", ".join(n.name for n in self.nodes)
        raise UserInputError("node", f"no lab node {name!r} (this lab has {names})")

    def guest_address(self, number: int) -> IPv4Interface:
        """The guest network address with host number `number` (1..253)."""
        if not 1 <= number < CLIENT_HOST:
            raise UserInputError("guest address", f"host number {number} is not in 1..253")
        net = self.config.guest_net
        return IPv4Interface(f"{net.network_address + number}/{net.prefixlen}")


def plan_lab(config: LabConfig) -> LabPlan:
    """The plan of the lab `config` describes.

    :raise UserInputError: a setting is out of range.
    """
    config.validate()
    p = config.prefix
    mig = config.migration_net
    nodes = tuple(
        LabNode(
            name=f"node{i}",
            index=i,
            netns=f"{p}-node{i}",
            migration_address=IPv4Interface(f"{mig.network_address + i}/{mig.prefixlen}"),
            local_dir=config.root / "nodes" / f"node{i}",
        )
        for i in range(1, config.nodes + 1)
    )
    guest = config.guest_net
    client_address = IPv4Interface(f"{guest.network_address + CLIENT_HOST}/{guest.prefixlen}")
    links: list[VethLink] = []
    for node in nodes:
        links.append(
            VethLink(
                f"m-{node.name}",
                FABRIC_MIGRATION_BRIDGE,
                node.netns,
                NODE_MIGRATION_IFACE,
                address=node.migration_address,
            )
        )
        links.append(
            VethLink(
                f"g-{node.name}",
                FABRIC_GUEST_BRIDGE,
                node.netns,
                NODE_UPLINK_IFACE,
                far_bridge=node.bridge,
            )
        )
    links.append(
        VethLink(
            "g-client", FABRIC_GUEST_BRIDGE, f"{p}-client", CLIENT_IFACE, address=client_address
        )
    )
    storage_netns, storage_address = "", None
    if config.storage == "glusterfs":
        storage_netns = f"{p}-storage"
        storage_address = IPv4Interface(f"{mig.network_address + STORAGE_HOST}/{mig.prefixlen}")
        links.append(
            VethLink(
                "m-storage", FABRIC_MIGRATION_BRIDGE, storage_netns, "eth0", address=storage_address
            )
        )
    etcd: list[tuple[str, IPv4Interface]] = []
    if config.state == "etcd":
        for i in range(1, ETCD_MEMBERS + 1):
            ns = f"{p}-etcd{i}"
            address = IPv4Interface(f"{mig.network_address + ETCD_HOST + i}/{mig.prefixlen}")
            etcd.append((ns, address))
            links.append(
                VethLink(f"m-etcd{i}", FABRIC_MIGRATION_BRIDGE, ns, "eth0", address=address)
            )
    shared = config.root / "shared"
    return LabPlan(
        config=config,
        fabric_netns=f"{p}-fabric",
        client_netns=f"{p}-client",
        client_address=client_address,
        nodes=nodes,
        links=tuple(links),
        shared_dir=shared,
        state_file=config.root / "lab.json",
        directories=(
            config.root,
            shared,
            config.root / "nodes",
            *(n.local_dir for n in nodes),
            *((config.root / "etcd",) if etcd else ()),
        ),
        storage_netns=storage_netns,
        storage_address=storage_address,
        etcd=tuple(etcd),
    )


def up_commands(plan: LabPlan) -> list[list[str]]:
    """The `ip` commands that build `plan`'s networks, in order, from nothing."""
    cmds: list[list[str]] = [["ip", "netns", "add", ns] for ns in plan.namespaces]
    cmds += [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in plan.namespaces]
    fabric = plan.fabric_netns
    for bridge in (FABRIC_MIGRATION_BRIDGE, FABRIC_GUEST_BRIDGE):
        cmds.append(["ip", "-n", fabric, "link", "add", bridge, "type", "bridge"])
        cmds.append(["ip", "-n", fabric, "link", "set", bridge, "up"])
    for node in plan.nodes:
        cmds.append(["ip", "-n", node.netns, "link", "add", node.bridge, "type", "bridge"])
        cmds.append(["ip", "-n", node.netns, "link", "set", node.bridge, "up"])
    for link in plan.links:
        cmds.append(
            [
                "ip",
                "-n",
                fabric,
                "link",
                "add",
                link.fabric_end,
                "type",
                "veth",
                "peer",
                "name",
                link.far_end,
                "netns",
                link.netns,
            ]
        )
        cmds.append(
            ["ip", "-n", fabric, "link", "set", link.fabric_end, "master", link.fabric_bridge, "up"]
        )
        if link.far_bridge is not None:
            cmds.append(
                ["ip", "-n", link.netns, "link", "set", link.far_end, "master", link.far_bridge]
            )
        if link.address is not None:
            cmds.append(
                ["ip", "-n", link.netns, "addr", "add", str(link.address), "dev", link.far_end]
            )
        cmds.append(["ip", "-n", link.netns, "link", "set", link.far_end, "up"])
    return cmds


def down_commands(plan: LabPlan, present: set[str]) -> list[list[str]]:
    """The commands that remove `plan`'s namespaces among those `present` (and so every
    link and bridge in them: a veth pair dies with either end's namespace)."""
    return [["ip", "netns", "del", ns] for ns in plan.namespaces if ns in present]
