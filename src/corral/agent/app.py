"""The agent's HTTP API (FastAPI, OpenAPI at /openapi.json, versioned under /v1).

Two applications: `api_app` serves the local CLI (unix socket) and the members (HTTPS,
mutual TLS, each request mapped to a current member by its certificate); `join_app` serves
only the join and the CA certificate, on its own port, since a joining node has no
certificate yet. Every route says who may call it (`access.py`). A request from the local
CLI carrying `x-corral-node: NAME` for another member is forwarded to it over mutual TLS;
requests from members are never forwarded.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from corral import __version__
from corral.agent.access import JOINER, LOCAL, Access, access_table, allow, caller_of
from corral.agent.api_models import (
    TASK_ID_PATTERN,
    ClusterInit,
    HeartbeatMessage,
    JoinCommand,
    JoinRequest,
    JoinResponse,
    LogChunk,
    RegistryModel,
    TaskCreate,
    TokenAnswer,
    TokenRequest,
)
from corral.agent.forward_stream import forward_stream, unreachable
from corral.agent.http_guards import (
    API_BODY_LIMIT,
    JOIN_BODY_LIMIT,
    FixedCaller,
    ForwardToMember,
    IdentifyMembers,
    LimitBody,
)
from corral.agent.metrics import node_registry
from corral.agent.node_agent import NodeAgent
from corral.agent.routes_drain import maintenance_routes
from corral.agent.routes_migrations import migration_routes, runtime_routes
from corral.agent.routes_vms import vm_routes
from corral.agent.task_stream import MEDIA_TYPE, task_events
from corral.api_errors import AccessDenied, error_body, status_for
from corral.errors import CorralError, EnvironmentProblem, UserInputError
from corral.model import NAME_PATTERN
from corral.tasks.states import TaskState

Via = Literal["local", "peer"]
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN)]
NodeName = Annotated[str, Path(pattern=NAME_PATTERN)]


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def corral_error(_: Request, exc: CorralError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    @app.exception_handler(sqlite3.OperationalError)
    async def state_failed(_: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        problem = EnvironmentProblem(f"this node's state database failed: {exc}")
        return JSONResponse(error_body(problem), status_code=503)

    @app.exception_handler(OSError)
    async def disk_failed(_: Request, exc: OSError) -> JSONResponse:
        if exc.errno != errno.ENOSPC:
            raise exc
        problem = EnvironmentProblem(f"no space left on this node: {exc.filename or exc}")
        return JSONResponse(error_body(problem), status_code=503)

    @app.exception_handler(ValidationError)
    async def invalid_inside(_: Request, exc: ValidationError) -> JSONResponse:
        # A model built from request data inside a handler: still the caller's mistake.
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        field = _field_of(tuple(first.get("loc", ())))
        return JSONResponse(
            {
                "error": {
                    "type": "UserInputError",
                    "field": field,
                    "message": f"{field}: {first.get('msg')}",
                }
            },
            status_code=422,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid')}"
        return JSONResponse(
            {"error": {"type": "UserInputError", "message": message, "field": field}},
            status_code=422,
        )


def _owner(request: Request, agent: NodeAgent) -> str:
    """Who a task is for: the local CLI, or the member that asked (by its certificate, never
    by what it says of itself)."""
    caller = caller_of(request)
    return f"cli@{agent.name}" if caller.local else str(caller.node)


def api_app(agent: NodeAgent, via: Via) -> FastAPI:
    """The node's API, as served to the local CLI (`via="local"`) or over mTLS."""
    app = FastAPI(
        title="corral agent", version=__version__, description="The API of one corral node agent."
    )
    _install_error_handlers(app)

    async def forward_to_member(request: Request, target: str) -> Response:
        if not caller_of(request).local:
            return JSONResponse(
                error_body(AccessDenied("only a node's local CLI may have requests forwarded")),
                status_code=403,
            )
        try:
            client = agent.peer(target)
        except CorralError as exc:
            return JSONResponse(error_body(exc), status_code=status_for(exc))
        body = await request.body()
        headers = {}
        if "content-type" in request.headers:
            headers["content-type"] = request.headers["content-type"]
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if MEDIA_TYPE in request.headers.get("accept", ""):
            return await forward_stream(client, target, path)
        try:
            answer = await run_in_threadpool(
                client.http.request,
                request.method,
                path,
                content=body,
                headers=headers,
                timeout=60,
                extensions=client.extensions,
            )
        except Exception as exc:
            return unreachable(target, exc)
        finally:
            client.close()
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    _node_routes(app, agent)
    _task_routes(app, agent)
    vm_routes(app, agent, lambda request: _owner(request, agent))
    migration_routes(app, agent, lambda request: _owner(request, agent))
    runtime_routes(app, agent)
    maintenance_routes(app, agent, lambda request: _owner(request, agent))
    access_table(app)  # refuses to build an app with a route that says nobody may call it
    # Outermost last: the body bound, then who is calling, then forwarding, then the rest.
    app.add_middleware(ForwardToMember, here=agent.name, forward=forward_to_member)
    if via == "local":
        app.add_middleware(FixedCaller, caller=LOCAL)
    else:
        app.add_middleware(IdentifyMembers, registry=agent.registry)
    app.add_middleware(LimitBody, limit=API_BODY_LIMIT)
    return app


def _node_routes(app: FastAPI, agent: NodeAgent) -> None:
    member, local = [allow(Access.MEMBER)], [allow(Access.LOCAL)]

    @app.get("/v1/health", tags=["node"], dependencies=member)
    def health() -> dict[str, Any]:
        """Liveness: the node's name, corral's version and whether it is a cluster member."""
        return {"node": agent.name, "version": __version__, "member": agent.pki.member}

    metrics = node_registry(agent)

    @app.get("/metrics", tags=["node"], dependencies=member, response_class=Response)
    def prometheus() -> Response:
        """Prometheus text format: VMs and tasks by state, peers' heartbeat age, every
        running migration's live numbers, finished migrations by outcome, histograms of
        downtime and total time (docs/metrics.md)."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/facts", tags=["node"], dependencies=member)
    def facts() -> dict[str, Any]:
        """This node's facts: architecture, CPU, hypervisor, memory, VM count, and the
        version of its member list (peers follow the CA holder's)."""
        return agent.facts()

    @app.post("/v1/heartbeat", tags=["node"], dependencies=member)
    async def heartbeat(body: HeartbeatMessage, request: Request) -> JSONResponse:
        """A member's heartbeat: its facts' version and live numbers (its whole facts when
        asked for); the answer is this node's, with its whole facts only when the version
        the member holds is not the current one. From members only: the local CLI is no
        node to be heard from. (Answered on the event loop: a few small reads from memory
        and SQLite, cheaper than the two thread hops a plain handler costs.)"""
        caller = caller_of(request)
        if caller.node is None:
            raise UserInputError("caller", "heartbeats come from members, over mutual TLS")
        # A Response as it is: FastAPI would otherwise walk the whole answer (every
        # member's beat) through jsonable_encoder first.
        return JSONResponse(agent.answer_heartbeat(caller.node, body.model_dump()))

    @app.get("/v1/cluster", tags=["cluster"], dependencies=member)
    def cluster() -> dict[str, Any]:
        """This node's cluster membership."""
        return agent.cluster_status()

    @app.post("/v1/cluster/init", tags=["cluster"], dependencies=local)
    def cluster_init(body: ClusterInit) -> dict[str, Any]:
        """Make a new cluster with this node as its first member and CA holder."""
        return agent.init_cluster(body.name)

    @app.post("/v1/cluster/tokens", tags=["cluster"], dependencies=local)
    def cluster_token(body: TokenRequest) -> TokenAnswer:
        """A single-use join token that expires after `ttl_seconds` (on the CA holder)."""
        token, expires = agent.new_token(body.ttl_seconds)
        return TokenAnswer(token=token, expires_at=expires)

    @app.post("/v1/cluster/join", tags=["cluster"], dependencies=local)
    def cluster_join(body: JoinCommand) -> dict[str, Any]:
        """Join this node to the cluster whose member answers at `address`."""
        return {"node": agent.name, "members": agent.join(body.address, body.token)}

    @app.get("/v1/nodes", tags=["cluster"], dependencies=member)
    def nodes() -> list[dict[str, Any]]:
        """Every member, its facts and whether it is online."""
        return agent.nodes()

    @app.delete("/v1/nodes/{name}", tags=["cluster"], dependencies=local)
    def remove_node(name: NodeName, force: bool = False) -> dict[str, str]:
        """Remove a member and revoke its certificate (on the CA holder); refused while it
        owns VMs unless `force`."""
        agent.remove_node(name, force=force)
        return {"removed": name}

    @app.get("/v1/registry", tags=["cluster"], dependencies=member)
    def registry() -> RegistryModel:
        """The members (name, address, certificate) and revoked certificates, numbered."""
        return RegistryModel.of(agent.registry.snapshot())

    @app.put("/v1/registry", tags=["cluster"], dependencies=[allow(Access.CA_HOLDER)])
    def follow_registry(body: RegistryModel) -> dict[str, Any]:
        """The CA holder's newer list of members (sent after a join or a removal)."""
        return {"applied": agent.follow_registry(body), "version": agent.registry.version}


def _task_routes(app: FastAPI, agent: NodeAgent) -> None:
    member = [allow(Access.MEMBER)]

    @app.get("/v1/tasks", tags=["tasks"], dependencies=member)
    def list_tasks(
        state: Annotated[list[TaskState] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[dict[str, Any]]:
        """Tasks of this node, newest first."""
        return [t.to_json() for t in agent.tasks.recent(set(state) if state else None, limit)]

    @app.get("/v1/tasks/kinds", tags=["tasks"], dependencies=member)
    def task_kinds() -> list[dict[str, Any]]:
        """The task kinds this agent runs."""
        return [
            {
                "name": k.name,
                "idempotent": k.idempotent,
                "from_peers": k.from_peers,
                "description": k.description,
            }
            for k in agent.runner.kinds.values()
        ]

    @app.post("/v1/tasks", tags=["tasks"], status_code=201, dependencies=member)
    def create_task(body: TaskCreate, request: Request) -> dict[str, Any]:
        """Queue a task on this node: the CLI's, or a member's deferred task of a kind
        members may give (`from_peers` in /v1/tasks/kinds)."""
        caller = caller_of(request)
        kind = agent.runner.kinds.get(body.kind)
        if not caller.local and kind is not None and not kind.from_peers:
            raise AccessDenied(f"{caller} may not create {body.kind} tasks here")
        task = agent.runner.submit(body.kind, body.args, _owner(request, agent), body.after)
        return task.to_json()

    @app.get("/v1/tasks/{task_id}", tags=["tasks"], dependencies=member)
    def get_task(task_id: TaskId) -> dict[str, Any]:
        """One task: state, progress, result or error, and its history."""
        return agent.tasks.get(task_id).to_json()

    @app.get("/v1/tasks/{task_id}/watch", tags=["tasks"], dependencies=member)
    async def watch_task(
        task_id: TaskId,
        phase: Annotated[str | None, Query(max_length=64)] = None,
    ) -> StreamingResponse:
        """The task now and after every change, as server-sent events (`event: task`, one
        JSON record per `data:` line), until it finishes, or until its progress shows
        `phase`; a comment line every few seconds keeps the link alive."""
        await run_in_threadpool(agent.tasks.get, task_id)  # 404 before the stream starts
        return StreamingResponse(
            task_events(agent.tasks, task_id, phase),
            media_type=MEDIA_TYPE,
            headers={"cache-control": "no-cache"},
        )

    @app.get("/v1/tasks/{task_id}/log", tags=["tasks"], dependencies=member)
    def task_log(task_id: TaskId, offset: Annotated[int, Query(ge=0)] = 0) -> LogChunk:
        """The task's log from byte `offset` (follow it by passing back `offset`)."""
        text, new_offset = agent.tasks.read_log(task_id, offset)
        return LogChunk(text=text, offset=new_offset)

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], dependencies=member)
    def cancel_task(task_id: TaskId) -> dict[str, Any]:
        """Ask a task to stop."""
        return agent.tasks.request_cancel(task_id).to_json()


def join_app(agent: NodeAgent) -> FastAPI:
    """The join endpoint and the CA certificate, served on their own port without client
    certificates: nothing else (no API description), and bodies of 64 KiB at most."""
    app = FastAPI(
        title="corral join endpoint",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    _install_error_handlers(app)
    join = [allow(Access.JOIN)]

    @app.get("/v1/join/ca", response_class=PlainTextResponse, tags=["join"], dependencies=join)
    def ca() -> str:
        """The cluster CA certificate (PEM), for the joiner to check against its token."""
        return agent.pki.ca_cert.read_text()

    @app.post("/v1/join", tags=["join"], dependencies=join)
    def join_cluster(body: JoinRequest, request: Request) -> JoinResponse:
        """Admit a node that presents a valid, unused, unexpired token and a CSR, from the
        address it claims."""
        came_from = request.client.host if request.client else ""
        return agent.accept_join(body, came_from)

    access_table(app)
    app.add_middleware(FixedCaller, caller=JOINER)
    app.add_middleware(LimitBody, limit=JOIN_BODY_LIMIT)
    return app
