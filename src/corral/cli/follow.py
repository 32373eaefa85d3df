"""Following a task the CLI queued: a progress display for people, the final record for
programs, and an exit code that says how it ended."""

from __future__ import annotations

from typing import Any

import typer

from corral.api_errors import Unreachable
from corral.cli.format import progress_text
from corral.cli.output import console
from corral.client import AgentClient
from corral.errors import CorralError
from corral.tasks.states import TaskState

FINISHED = {state.value for state in TaskState if state.finished}
EXIT_BY_STATE = {
    TaskState.SUCCEEDED: 0,
    TaskState.FAILED: 11,
    TaskState.CANCELLED: 12,
    TaskState.INTERRUPTED: 13,
}


class TaskEnded(CorralError):
    """A followed task ended other than in success."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(
            f"task {task['id']} ({task['kind']}) {task['state']}: "
            f"{task['error'] or 'no reason given'}"
        )
        self.exit_code = EXIT_BY_STATE.get(task["state"], 1)


def follow_task(
    client: AgentClient,
    task: dict[str, Any],
    *,
    quiet: bool = False,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Follow `task` as it changes (the agent streams it) until it finishes; show its
    progress unless `quiet`.

    :raise TaskEnded: it failed, was cancelled or interrupted.
    :raise WaitTimeout: it is still running after `timeout`.
    """
    task_id = task["id"]
    path = f"/tasks/{task_id}/watch"
    last = task
    if quiet:
        for update in client.stream(path, timeout=timeout):
            last = update
    else:
        from rich.progress import (  # for people only: programs (quiet) do without
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            row = bar.add_task(f"{task['kind']} {task_id}", total=None, info="")
            for update in client.stream(path, timeout=timeout):
                last = update
                p = update["progress"]
                bar.update(
                    row,
                    total=p.get("total"),
                    completed=p.get("done", 0),
                    info=progress_text(p) or update["state"],
                )
    ended_stream(last)
    if last["state"] != "succeeded":
        raise TaskEnded(last)
    return last


def ended_stream(task: dict[str, Any]) -> None:
    """:raise Unreachable: the agent ended the task's stream before the task finished (it
    is stopping)."""
    if task["state"] not in FINISHED:
        raise Unreachable(
            f"the agent stopped streaming task {task['id']} while it is {task['state']}"
            f" (is the agent stopping?): follow it with 'corral task show {task['id']}'"
        )


def exit_for(task: dict[str, Any]) -> None:
    raise typer.Exit(EXIT_BY_STATE.get(task["state"], 1))
