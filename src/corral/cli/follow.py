"""Following a task the CLI queued: a progress display for people, the final record for
programs, and an exit code that says how it ended."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from corral.cli.format import progress_text
from corral.cli.output import console
from corral.client import AgentClient
from corral.errors import CorralError
from corral.tasks.states import TaskState
from corral.waiting import WaitTimeout

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
    interval: float = 0.2,
) -> dict[str, Any]:
    """Poll `task` until it finishes; show its progress unless `quiet`.

    :raise TaskEnded: it failed, was cancelled or interrupted.
    :raise WaitTimeout: it is still running after `timeout`.
    """
    deadline = time.monotonic() + timeout
    task_id = task["id"]
    if quiet:
        while task["state"] not in FINISHED and time.monotonic() < deadline:
            time.sleep(interval)
            task = client.get(f"/tasks/{task_id}")
    else:
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
            while task["state"] not in FINISHED and time.monotonic() < deadline:
                p = task["progress"]
                bar.update(
                    row,
                    total=p.get("total"),
                    completed=p.get("done", 0),
                    info=progress_text(p) or task["state"],
                )
                time.sleep(interval)
                task = client.get(f"/tasks/{task_id}")
    if task["state"] not in FINISHED:
        raise WaitTimeout(f"task {task_id} is still {task['state']} after {timeout:g}s")
    if task["state"] != "succeeded":
        raise TaskEnded(task)
    return task


def exit_for(task: dict[str, Any]) -> None:
    raise typer.Exit(EXIT_BY_STATE.get(task["state"], 1))
