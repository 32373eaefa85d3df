"""Who may call what. Every route of the agent's API names one `Access`; the apps refuse to
start with a route that names none, and docs/security.md shows the same table.

Callers, from the most to the least trusted:

- **local root**: the CLI on this node, over the unix socket only root can open;
- **CA holder**: the member whose agent holds the cluster CA's key, over mutual TLS;
- **member**: any current member, over mutual TLS, identified by its certificate's
  fingerprint as the CA holder recorded it at the join (not merely "signed by the CA");
- **join port**: anyone who can reach port 4711; the join token authenticates.

Must never import: cli, lab.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute

from corral.api_errors import AccessDenied

CALLER_KEY = "corral.caller"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the local CLI, or a member named by its certificate."""

    via: Literal["local", "peer", "join"]
    node: str | None = None
    holds_ca: bool = False

    @property
    def local(self) -> bool:
        return self.via == "local"

    def __str__(self) -> str:
        if self.via == "join":
            return "a caller on the join port"
        return "the local CLI" if self.local else f"member {self.node}"


LOCAL = Caller("local")
JOINER = Caller("join")


class Access(StrEnum):
    LOCAL = "local root"
    MEMBER = "member"
    CA_HOLDER = "CA holder"
    JOIN = "join port"

    def allows(self, caller: Caller) -> bool:
        if self is Access.LOCAL:
            return caller.local
        if self is Access.MEMBER:
            # the local socket, or a member (other certificates never get this far)
            return caller.via in ("local", "peer")
        if self is Access.CA_HOLDER:
            return caller.via == "peer" and caller.holds_ca
        return caller.via == "join"

    @property
    def who(self) -> str:
        return {
            Access.LOCAL: "the local CLI (root on this node)",
            Access.MEMBER: "the local CLI or a member",
            Access.CA_HOLDER: "the member that holds the cluster CA's key",
            Access.JOIN: "anyone with a join token, on the join port",
        }[self]


def caller_of(request: Request) -> Caller:
    caller = request.scope.get(CALLER_KEY)
    return caller if isinstance(caller, Caller) else LOCAL


def allow(access: Access) -> Any:
    """The dependency a route declares: refuses (403) any caller `access` does not allow,
    before the handler runs and before its body is looked at."""

    async def check(request: Request) -> None:  # no I/O: on the event loop, no thread hop
        caller = caller_of(request)
        if not access.allows(caller):
            raise AccessDenied(
                f"{request.method} {request.url.path}: only {access.who} may call this"
                f" ({caller} may not)"
            )

    check.access = access  # type: ignore[attr-defined]
    return Depends(check)


def route_access(route: APIRoute) -> Access | None:
    for dependency in route.dependencies:
        found = getattr(dependency.dependency, "access", None)
        if isinstance(found, Access):
            return found
    return None


def access_table(app: FastAPI) -> list[tuple[str, str, Access]]:
    """(method, path, access) of every route; `RuntimeError` when a route names none."""
    rows: list[tuple[str, str, Access]] = []
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        access = route_access(route)
        if access is None:
            raise RuntimeError(f"route {route.path} does not say who may call it")
        rows.extend((method, route.path, access) for method in sorted(route.methods or ()))
    return rows
