"""The request and response bodies of the agent's API (pydantic): what the OpenAPI
description shows, and what every request is validated against before anything runs."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from corral.cluster.registry import NodeRecord
from corral.model import NAME_PATTERN, VmSpec

TASK_ID_PATTERN = r"^[0-9a-f]{12}$"
IP_PATTERN = r"^[0-9a-fA-F.:]{2,45}$"


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
    name: str = Field(pattern=NAME_PATTERN)
    address: IpAddress
    port: int = Field(ge=1, le=65535)
    joined_at: float = Field(ge=0)

    @classmethod
    def of(cls, node: NodeRecord) -> MemberModel:
        return cls(name=node.name, address=node.address, port=node.port, joined_at=node.joined_at)


class JoinRequest(Body):
    """From a joining node to the CA holder's join endpoint."""

    token_id: str = Field(pattern=r"^[0-9a-f]{8}$")
    secret: str = Field(pattern=r"^[A-Za-z0-9_-]{32}$")
    node_name: str = Field(pattern=NAME_PATTERN)
    address: IpAddress
    api_port: int = Field(ge=1, le=65535)
    csr: str = Field(min_length=1, max_length=10_000)
    facts: dict[str, Any] = Field(default_factory=dict)


class JoinResponse(Body):
    ca: str
    cert: str
    members: list[MemberModel]


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
