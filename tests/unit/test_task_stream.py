"""Following a task without polling: the store's change feed wakes waiters (threads and
coroutines) at once, and `GET /v1/tasks/{id}/watch` streams every change of a real task of
a real runner, ending when it finishes or reaches the phase asked for."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.agent import task_stream
from corral.agent.app import api_app
from corral.agent.node_agent import NodeAgent
from corral.tasks.changes import ChangeFeed


def test_a_bump_from_another_thread_wakes_a_waiting_thread() -> None:
    feed = ChangeFeed()
    seen = feed.version("t1")
    threading.Timer(0.05, feed.bump, args=("t1",)).start()
    assert feed.wait("t1", seen, timeout=30) == seen + 1


def test_a_change_already_made_is_not_waited_for() -> None:
    feed = ChangeFeed()
    feed.bump("t1")
    assert feed.wait("t1", 0, timeout=30) == 1  # returns at once: it was past 0 already


def test_another_tasks_change_does_not_count() -> None:
    feed = ChangeFeed()
    feed.bump("other")
    assert feed.wait("t1", 0, timeout=0.05) == 0  # the timeout, not the other task


def test_a_coroutine_is_woken_by_a_thread_and_close_ends_every_wait() -> None:
    feed = ChangeFeed()

    async def scenario() -> tuple[int, int]:
        threading.Timer(0.05, feed.bump, args=("t1",)).start()
        woken = await feed.wait_async("t1", 0, timeout=30)
        threading.Timer(0.05, feed.close).start()
        closed = await feed.wait_async("t1", woken, timeout=30)
        return woken, closed

    assert asyncio.run(scenario()) == (1, 1)
    assert feed.closed
    assert feed.wait("t1", 1, timeout=30) == 1  # closed: no wait blocks again


def watch(api: TestClient, task_id: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """The records of the task's stream, and how many keep-alive comments came."""
    records, keepalives = [], 0
    with api.stream("GET", f"/v1/tasks/{task_id}/watch", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                records.append(json.loads(line[5:]))
            elif line.startswith(":"):
                keepalives += 1
    return records, keepalives


def test_the_stream_shows_each_step_and_ends_when_the_task_finishes(
    agent: NodeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_stream, "KEEPALIVE_S", 0.05)
    api = TestClient(api_app(agent, "local"))
    body = {"kind": "sleep", "args": {"seconds": 0.6, "steps": 3}}
    task_id = api.post("/v1/tasks", json=body).json()["id"]
    records, keepalives = watch(api, task_id)
    assert records[-1]["state"] == "succeeded"
    assert [r["state"] for r in records[:-1]] == [
        s for s in (r["state"] for r in records[:-1]) if s in ("queued", "running")
    ]
    steps = [r["progress"]["done"] for r in records if r["progress"].get("phase") == "sleeping"]
    assert steps == [0, 1, 2]  # every step seen, in order, none twice
    assert keepalives >= 1  # 0.2 s between steps, a keep-alive every 0.05 s


def test_the_stream_ends_at_the_phase_asked_for(agent: NodeAgent) -> None:
    api = TestClient(api_app(agent, "local"))
    body = {"kind": "sleep", "args": {"seconds": 30, "steps": 3}}
    task_id = api.post("/v1/tasks", json=body).json()["id"]
    records, _ = watch(api, task_id, phase="sleeping")
    assert records[-1]["progress"]["phase"] == "sleeping"
    assert records[-1]["state"] == "running"  # it ended there, long before the task
    api.post(f"/v1/tasks/{task_id}/cancel")


def test_the_stream_of_an_unknown_task_is_a_404_before_any_stream(agent: NodeAgent) -> None:
    api = TestClient(api_app(agent, "local"))
    answer = api.get("/v1/tasks/abcdef123456/watch")
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "NotFoundError"
