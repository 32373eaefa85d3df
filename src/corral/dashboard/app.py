"""`corral dashboard`: server-rendered pages (FastAPI + Jinja2) over the local agent's API,
the same API the CLI uses, with htmx and its server-sent-events extension (vendored, see
static/VENDORED.md) for what changes live. No build step, no node.js at run time.

Every action is a POST form carrying the page's token (a page of another site cannot make
the browser act here); an action the API refuses shows the API's message and reasons, never
a stack trace. With a password (required off loopback) every request needs HTTP Basic.

Must never import: agent, lab.
"""

from __future__ import annotations

import base64
import hmac
import html
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from corral.api_errors import AccessDenied, Unreachable, status_for
from corral.client import AgentClient
from corral.dashboard.views import Chart, live_numbers, node_row, size, vm_row
from corral.errors import CorralError, UserInputError
from corral.model import is_valid_name

HERE = Path(__file__).parent
FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}
MOVING = ("disks", "transfer", "post-copy")  # phases with bytes remaining to chart
Connect = Callable[[str | None], AgentClient]


def _name(value: str, what: str) -> str:
    """:raise UserInputError: not a node, VM or task name."""
    if not is_valid_name(value):
        raise UserInputError(what, "a name (letters, digits, '_', '.', '-')")
    return value


class Pages:
    """What every route needs: the agent, the templates, the forms' token."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["size"] = size
        self.token = secrets.token_urlsafe(24)

    def require_token(self, csrf: Annotated[str, Form()] = "") -> None:
        """Every action's form carries the page's token (a dependency: the form is parsed
        once, for the route too).

        :raise AccessDenied: a form that is not from this dashboard."""
        if not hmac.compare_digest(csrf, self.token):
            raise AccessDenied("this form is not from this dashboard (reload the page)")

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(
            request, name, {"csrf": self.token, **context}, status_code=status
        )


def dashboard_app(connect: Connect, password: str | None = None) -> FastAPI:
    """The dashboard; `connect(node)` is a client of the local agent that asks `node` (None:
    the local one)."""
    app = FastAPI(title="corral dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    pages = Pages(connect)
    page = pages.page
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if password is not None and not _authorized(request, password):
            return Response(
                "a password is needed",
                status_code=401,
                headers={"www-authenticate": 'Basic realm="corral"'},
            )
        response: Response = await call_next(request)
        return response

    def refused(request: Request, exc: CorralError) -> HTMLResponse:
        details = getattr(exc, "details", None) or []
        status = 503 if isinstance(exc, Unreachable) else status_for(exc)  # the agent is down
        return page(request, "error.html", status, message=exc.message, reasons=details)

    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> HTMLResponse:
        return refused(request, exc)

    @app.get("/", response_class=HTMLResponse)
    def cluster(request: Request) -> HTMLResponse:
        with connect(None) as client:
            nodes = client.get("/nodes")
            view = client.get("/cluster/vms")
        silent = [n["name"] for n in view["nodes"] if not n["answered"]]
        return page(
            request,
            "cluster.html",
            nodes=[node_row(n) for n in nodes],
            vms=[vm_row(vm) for vm in view["vms"]],
            silent=silent,
        )

    _action_routes(app, pages)
    _task_routes(app, pages)
    return app


def _action_routes(app: FastAPI, pages: Pages) -> None:
    """Start, stop, migrate (after its plan), drain and undrain: the API's routes."""
    connect, page = pages.connect, pages.page
    token = [Depends(pages.require_token)]

    @app.post("/vms/{vm}/start", dependencies=token)
    def start(vm: str) -> RedirectResponse:
        with connect(None) as client:
            client.post(f"/vms/{_name(vm, 'vm')}/start")
        return RedirectResponse("/", status_code=303)

    @app.post("/vms/{vm}/stop", dependencies=token)
    def stop(vm: str) -> RedirectResponse:
        with connect(None) as client:
            client.post(f"/vms/{_name(vm, 'vm')}/stop", {"timeout": 30})
        return RedirectResponse("/", status_code=303)

    @app.get("/vms/{vm}/migrate", response_class=HTMLResponse)
    def migrate_form(
        request: Request, vm: str, target: Annotated[str | None, Query()] = None
    ) -> HTMLResponse:
        """The target picker; with a target, the plan (`corral migrate --plan`) and a
        button to confirm."""
        _name(vm, "vm")
        with connect(None) as client:
            nodes = [n["name"] for n in client.get("/nodes")]
            plan = None
            if target:
                body = {"vm": vm, "target": _name(target, "target")}
                plan = client.post("/migrations/plan", body, timeout=120)
        rows = [
            (key, value)
            for key, value in ((plan or {}).get("estimate") or {}).items()
            if isinstance(value, int | float | str)
        ]
        return page(
            request, "migrate.html", vm=vm, nodes=nodes, target=target, plan=plan, estimate=rows
        )

    @app.post("/vms/{vm}/migrate", dependencies=token)
    def migrate(vm: str, target: Annotated[str, Form()]) -> RedirectResponse:
        body = {"vm": _name(vm, "vm"), "target": _name(target, "target")}
        with connect(None) as client:
            started = client.post("/migrations", body, timeout=120)
        return RedirectResponse(f"/tasks/{started['source']}/{started['task']['id']}", 303)

    @app.post("/nodes/{node}/drain", dependencies=token)
    def drain(node: str) -> RedirectResponse:
        with connect(_name(node, "node")) as client:
            task = client.post("/node/drain", {}, timeout=60)
        return RedirectResponse(f"/tasks/{node}/{task['id']}", status_code=303)

    @app.post("/nodes/{node}/undrain", dependencies=token)
    def undrain(node: str) -> RedirectResponse:
        with connect(_name(node, "node")) as client:
            client.post("/node/undrain")
        return RedirectResponse("/", status_code=303)


def _task_routes(app: FastAPI, pages: Pages) -> None:
    """The task log of every node, one task with its log, its live panel and cancel."""
    connect, page = pages.connect, pages.page
    token = [Depends(pages.require_token)]

    @app.get("/tasks", response_class=HTMLResponse)
    def tasks(
        request: Request,
        node: Annotated[str | None, Query()] = None,
        kind: Annotated[str | None, Query()] = None,
        state: Annotated[str | None, Query()] = None,
    ) -> HTMLResponse:
        """Every task of the cluster (each member asked through the local agent), newest
        first, filtered by node, kind and state."""
        with connect(None) as client:
            members = [n["name"] for n in client.get("/nodes")] or [None]
        found: list[dict[str, Any]] = []
        silent = []
        for member in members:
            if node and member != node:
                continue
            try:
                with connect(member) as client:
                    listed = client.get("/tasks", state=state or None, limit=200)
            except CorralError:
                silent.append(member)
                continue
            found += [dict(t, node=member) for t in listed if not kind or t["kind"] == kind]
        found.sort(key=lambda t: t["created_at"], reverse=True)
        kinds = sorted({t["kind"] for t in found} | ({kind} if kind else set()))
        return page(
            request,
            "tasks.html",
            tasks=found,
            nodes=members,
            kinds=kinds,
            states=sorted(FINISHED | {"queued", "running"}),
            chosen={"node": node, "kind": kind, "state": state},
            silent=silent,
        )

    @app.get("/tasks/{node}/{task_id}", response_class=HTMLResponse)
    def task(request: Request, node: str, task_id: str) -> HTMLResponse:
        with connect(_name(node, "node")) as client:
            record = client.get(f"/tasks/{_name(task_id, 'task')}")
            log = client.get(f"/tasks/{task_id}/log")
        return page(
            request,
            "task.html",
            node=node,
            task=record,
            log=log.get("text", ""),
            live=_live(record, Chart()),
            stream=f"/tasks/{quote(node)}/{quote(task_id)}/stream",
        )

    @app.get("/tasks/{node}/{task_id}/stream")
    def stream(node: str, task_id: str) -> StreamingResponse:
        """Server-sent events: the task's live panel, rendered here at each change."""
        path = f"/tasks/{_name(task_id, 'task')}/watch"
        client = connect(_name(node, "node"))
        panel = pages.templates.get_template("live.html")

        return StreamingResponse(
            live_events(client, path, panel, node), media_type="text/event-stream"
        )

    @app.post("/tasks/{node}/{task_id}/cancel", dependencies=token)
    def cancel(node: str, task_id: str) -> RedirectResponse:
        with connect(_name(node, "node")) as client:
            client.post(f"/tasks/{_name(task_id, 'task')}/cancel")
        return RedirectResponse(f"/tasks/{node}/{task_id}", status_code=303)


def live_events(client: AgentClient, path: str, panel: Any, node: str) -> Iterator[str]:
    """Server-sent events of a task's live panel, one per change of the task (rendered
    here), until it finishes; the remaining bytes charted and the policy's actions listed
    as they come."""
    chart = Chart()
    actions: list[str] = []  # the policy's actions, as they happen
    started = time.monotonic()
    try:
        for update in client.stream(path, timeout=86_400):
            p = update["progress"]
            if p.get("phase") in MOVING and (p.get("done") or p.get("remaining")):
                chart.add(time.monotonic() - started, p.get("remaining"))
            action = p.get("last_action")
            if action and (not actions or actions[-1] != action):
                actions.append(str(action))
            live = _live(update, chart, actions)
            text = panel.render(task=update, live=live, node=node)
            yield (
                "event: progress\n"
                + "".join(f"data: {line}\n" for line in text.splitlines())
                + "\n"
            )
            if update["state"] in FINISHED:
                yield "event: finished\ndata: done\n\n"
                return
    except CorralError as exc:
        yield f"event: progress\ndata: <p class=error>{html.escape(exc.message)}</p>\n\n"
    finally:
        client.close()


def _live(task: dict[str, Any], chart: Chart, actions: list[str] | None = None) -> dict[str, Any]:
    progress = task.get("progress") or {}
    migration = task["kind"] == "migration.send"
    if actions is None:  # a page, not the stream: what the task's record says
        last = progress.get("last_action")
        actions = (
            [str(last)] if last else list((task.get("result") or {}).get("policy_actions") or [])
        )
    return {
        "actions": actions,
        "migration": migration,
        "rows": live_numbers(progress) if migration else [],
        "chart": chart.svg() if migration else "",
        "progress": progress,
        "drain": task["kind"] == "node.drain",
    }


def _authorized(request: Request, password: str) -> bool:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        _, _, given = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return hmac.compare_digest(given.encode(), password.encode())
