"""`corral task ...`: the deferred tasks of a node (CBSD's `cbsd task`)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from corral.cli.connection import JsonOption, NodeOption, agent_client
from corral.cli.follow import FINISHED, TaskEnded, exit_for, follow_task
from corral.cli.format import ago, progress_text
from corral.cli.output import console, print_json
from corral.client import AgentClient
from corral.errors import UserInputError
from corral.tasks.states import TaskState

task_app = typer.Typer(
    help="Deferred tasks: list, inspect, follow and cancel them.",
    no_args_is_help=True,
    add_completion=False,
)
TaskIdArg = Annotated[str, typer.Argument(help="The task's id (12 hex digits).")]


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError("--arg", f"{pair!r} is not KEY=VALUE")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


@task_app.command("create")
def create_command(
    kind: Annotated[str, typer.Argument(help="The task kind, e.g. sleep.")],
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", help="KEY=VALUE (VALUE read as JSON when it parses). Repeatable."),
    ] = None,
    after: Annotated[str | None, typer.Option(help="Run only after this task succeeded.")] = None,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Queue a task on a node."""
    body = {"kind": kind, "args": _parse_args(arg or []), "after": after}
    with agent_client(node) as client:
        task = client.post("/tasks", body)
    if json_out:
        print_json(task)
    else:
        typer.echo(task["id"])


@task_app.command("list")
def list_command(
    state: Annotated[list[str] | None, typer.Option(help="Only tasks in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """The node's tasks, newest first."""
    with agent_client(node) as client:
        tasks = client.get("/tasks", state=state, limit=limit)
    if json_out:
        print_json(tasks)
        return
    table = Table()
    for column in ("id", "kind", "state", "owner", "created", "progress", "error"):
        table.add_column(column)
    for t in tasks:
        table.add_row(
            t["id"],
            t["kind"],
            t["state"],
            t["owner"],
            ago(t["created_at"]),
            progress_text(t["progress"]),
            (t["error"] or "")[:60],
        )
    console.print(table)


@task_app.command("show")
def show_command(task_id: TaskIdArg, node: NodeOption = None, json_out: JsonOption = False) -> None:
    """One task: state, arguments, progress, result or error, and its history."""
    with agent_client(node) as client:
        task = client.get(f"/tasks/{task_id}")
    if json_out:
        print_json(task)
        return
    for key in (
        "id",
        "kind",
        "state",
        "owner",
        "attempt",
        "after",
        "args",
        "progress",
        "result",
        "error",
    ):
        console.print(f"{key:10} {task[key]}", highlight=False, markup=False)
    console.print("history:")
    for event in task["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        console.print(
            f"  {stamp} {event['from'] or '-'} -> {event['to']}  {event['reason']}", highlight=False
        )


def _follow_log(client: AgentClient, task_id: str, interval: float = 0.5) -> str:
    offset = 0
    while True:
        task = client.get(f"/tasks/{task_id}")
        chunk = client.get(f"/tasks/{task_id}/log", offset=offset)
        if chunk["text"]:
            typer.echo(chunk["text"], nl=False)
        offset = chunk["offset"]
        if task["state"] in FINISHED and not chunk["text"]:
            return str(task["state"])
        time.sleep(interval)


@task_app.command("logs")
def logs_command(
    task_id: TaskIdArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the task finishes.")
    ] = False,
    node: NodeOption = None,
) -> None:
    """Print a task's log."""
    with agent_client(node) as client:
        if follow:
            _follow_log(client, task_id)
        else:
            offset = 0
            while chunk := client.get(f"/tasks/{task_id}/log", offset=offset):
                if not chunk["text"]:
                    break
                typer.echo(chunk["text"], nl=False)
                offset = chunk["offset"]


@task_app.command("cancel")
def cancel_command(
    task_id: TaskIdArg, node: NodeOption = None, json_out: JsonOption = False
) -> None:
    """Ask a task to stop (a queued one is cancelled at once)."""
    with agent_client(node) as client:
        task = client.post(f"/tasks/{task_id}/cancel")
    if json_out:
        print_json(task)
    else:
        console.print(
            f"{task_id}: {task['state']}"
            + (" (cancel requested)" if task["state"] == TaskState.RUNNING else "")
        )


@task_app.command("wait")
def wait_command(
    task_id: TaskIdArg,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Wait for a task to finish, showing its progress. Exit code: 0 succeeded, 11 failed,
    12 cancelled, 13 interrupted, 8 timed out."""
    with agent_client(node) as client:
        task = client.get(f"/tasks/{task_id}")
        try:
            task = follow_task(client, task, quiet=json_out, timeout=timeout)
        except TaskEnded:
            task = client.get(f"/tasks/{task_id}")
    if json_out:
        print_json(task)
    else:
        detail = f": {task['error']}" if task["error"] else ""
        console.print(f"{task_id} {task['state']}{detail}", highlight=False, markup=False)
    exit_for(task)
