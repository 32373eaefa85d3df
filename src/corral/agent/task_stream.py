"""A task's record streamed to a client as it changes (server-sent events), so the CLI, a
migration's source and a web page follow a task without polling: one `data:` line with the
whole record now and after each change, a comment line as keep-alive, and the end of the
stream when the task finishes (or reaches the progress phase the client waits for).

The stream waits on the store's change feed from the event loop (no worker thread is held
while it waits); reading the record is a short trip to a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from corral.tasks.store import Task, TaskStore

KEEPALIVE_S = 5.0  # a comment line this often, so proxies and clients see the link alive
MEDIA_TYPE = "text/event-stream"


def event(task: Task) -> str:
    return f"event: task\ndata: {json.dumps(task.to_json())}\n\n"


def reached(task: Task, phase: str | None) -> bool:
    """Whether the stream may end with this record."""
    return task.state.finished or (phase is not None and task.progress.get("phase") == phase)


async def task_events(
    store: TaskStore, task_id: str, phase: str | None = None
) -> AsyncIterator[str]:
    """The task now and after each change, until it finishes or shows `phase`."""
    seen = store.changes.version(task_id)  # taken before the read: no change is missed
    task = await run_in_threadpool(store.get, task_id)
    sent = event(task)
    yield sent
    while not reached(task, phase) and not store.changes.closed:
        now = await store.changes.wait_async(task_id, seen, KEEPALIVE_S)
        if now == seen:
            yield ": keep-alive\n\n"
            continue
        seen = now
        task = await run_in_threadpool(store.get, task_id)
        if event(task) != sent:  # several changes read at once are one record
            sent = event(task)
            yield sent
