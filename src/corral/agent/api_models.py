"""The request and response bodies of the agent's API (pydantic): what the OpenAPI
description shows, and what every request is validated against before anything runs."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from corral.cluster.registry import Member, RegistrySnapshot
from corral.model import NAME_PATTERN, VmSpec

TASK_ID_PATTERN = r"^[0-9a-f]{12}$"
FINGERPRINT_PATTERN = r"^[0-9a-f]{64}$"
IP_PATTERN = r"^[0-9a-fA-F.:]{2,45}$"


def normalized_ip(value: str) -> str:
    """An IP address in its one canonical spelling, an IPv4-mapped IPv6 address as the IPv4
    address it maps ("" when `value` is none)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address") from exc


IpAddress = Annotated[str, Field(pattern=IP_PATTERN), AfterValidator(_ip_address)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterInit(Body):
    name: str = Field("corral", pattern=NAME_PATTERN, description="the cluster's name")


class TokenRequest(Body):
    ttl_seconds: float = Field(3600, ge=1, le=7 * 24 * 3600)


class TokenAnswer(Body):
    token: str
    expires_at: float


class JoinCommand(Body):
    """From the local CLI: join the cluster at `address` with `token`."""

    address: str = Field(pattern=r"^[0-9a-fA-F.:\[\]]{2,60}$", description="HOST or HOST:PORT")
    token: str = Field(min_length=1, max_length=200)


class MemberModel(Body):
    """A member as the CA holder admitted it: its name bound to its certificate."""

    name: str = Field(pattern=NAME_PATTERN)
    address: IpAddress
    port: int = Field(ge=1, le=65535)
    joined_at: float = Field(ge=0)
    fingerprint: str = Field(pattern=FINGERPRINT_PATTERN, description="SHA-256 of its cert")
    holds_ca: bool = False

    @classmethod
    def of(cls, member: Member) -> MemberModel:
        return cls(
            name=member.name,
            address=member.address,
            port=member.port,
            joined_at=member.joined_at,
            fingerprint=member.fingerprint,
            holds_ca=member.holds_ca,
        )

    def member(self) -> Member:
        return Member(
            self.name, self.address, self.port, self.joined_at, self.fingerprint, self.holds_ca
        )


class RegistryModel(Body):
    """The CA holder's list of members, numbered; every other node follows it."""

    version: int = Field(ge=0)
    members: list[MemberModel] = Field(max_length=10_000)
    revoked: list[str] = Field(default_factory=list, max_length=100_000)

    @classmethod
    def of(cls, snapshot: RegistrySnapshot) -> RegistryModel:
        return cls(
            version=snapshot.version,
            members=[MemberModel.of(m) for m in snapshot.members],
            revoked=list(snapshot.revoked),
        )

    def snapshot(self) -> RegistrySnapshot:
        for fingerprint in self.revoked:
            if re.fullmatch(FINGERPRINT_PATTERN, fingerprint) is None:
                raise ValueError(f"revoked: {fingerprint[:80]!r} is not a fingerprint")
        return RegistrySnapshot(
            self.version, tuple(m.member() for m in self.members), tuple(self.revoked)
        )


class JoinRequest(Body):
    """From a joining node to the CA holder's join endpoint."""

    token_id: str = Field(pattern=r"^[0-9a-f]{8}$")
    secret: str = Field(pattern=r"^[A-Za-z0-9_-]{32}$")
    node_name: str = Field(pattern=NAME_PATTERN)
    address: IpAddress
    api_port: int = Field(ge=1, le=65535)
    csr: str = Field(min_length=1, max_length=10_000)
    facts: dict[str, Any] = Field(default_factory=dict, max_length=100)


class JoinResponse(Body):
    ca: str
    cert: str
    registry: RegistryModel


class TaskCreate(Body):
    kind: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,40}$")
    args: dict[str, Any] = Field(default_factory=dict)
    after: str | None = Field(None, pattern=TASK_ID_PATTERN)


class LogChunk(Body):
    text: str
    offset: int


class StopRequest(Body):
    timeout: float = Field(30, ge=0, le=3600, description="seconds before forcing")


class CheckpointCreate(Body):
    name: str = Field(pattern=NAME_PATTERN)
    suspend: bool = False


class AdoptRequest(Body):
    spec: VmSpec


class HeartbeatMessage(BaseModel):
    """What a member says of itself at each heartbeat (agent/facts_cache.py)."""

    model_config = ConfigDict(extra="forbid")

    live: dict[str, Any]
    known: str | None = Field(None, max_length=64)  # the version of the receiver's facts held
    facts: dict[str, Any] | None = None  # the sender's whole facts, when they were asked for
    # Membership by gossip (agent/gossip.py): the sender's own state, the receiver's state as
    # the sender holds it, the states that changed lately, a digest of the sender's whole
    # view, and whether the sender wants the receiver's whole view in the answer.
    state: list[Any] | None = None
    you: list[Any] | None = None
    news: dict[str, Any] | None = None
    digest: str | None = Field(None, max_length=64)
    need_view: bool = False
