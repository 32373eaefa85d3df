"""`GET /metrics`: Prometheus's text format, read back with prometheus_client's own parser,
from the records an agent keeps: a running migration's live numbers from its task's
progress, finished migrations counted by outcome and reason, histograms of downtime and
total time; a member may scrape, a certificate of no member may not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from corral.agent.app import api_app
from corral.agent.node_agent import NodeAgent
from corral.migration.journal import MigrationPhase
from corral.tasks.states import TaskState
from tests.unit.member_apps import certificate, member_agent, peer_app


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NodeAgent]:
    a = member_agent(tmp_path)
    yield a
    a.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[s.name, tuple(sorted(s.labels.items()))] = s.value
    return found


def migration(agent: NodeAgent, vm: str, state: TaskState, **fields: object) -> str:
    record = agent.journal.begin(vm, agent.name, "node2")
    task = agent.tasks.create(
        "migration.send",
        {"migration_id": record.id, "options": {"vm": vm, "target": "node2"}},
        "cli@holder",
    )
    if state != TaskState.QUEUED:
        agent.tasks.transition(task.id, TaskState.RUNNING)
    if state.finished:
        agent.tasks.transition(task.id, state, **fields)  # type: ignore[arg-type]
    return record.id


def test_a_running_migration_and_finished_ones_as_prometheus_reads_them(agent: NodeAgent) -> None:
    running = agent.tasks.get(_running(agent))
    assert running.state == TaskState.RUNNING
    for downtime, total in ((40, 1.2), (120, 3.0)):
        migration(
            agent,
            "ok",
            TaskState.SUCCEEDED,
            result={"downtime_ms": downtime, "total_s": total},
        )
    failed = migration(
        agent,
        "bad",
        TaskState.FAILED,
        error="the target died",
        failure=("MigrationFailed", 14),
    )
    agent.journal.step(failed, MigrationPhase.ROLLED_BACK, "target lost")
    stopped = migration(agent, "stop", TaskState.CANCELLED)
    agent.journal.step(stopped, MigrationPhase.ROLLED_BACK, "cancelled")

    text = TestClient(api_app(agent, "local")).get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    found = samples(text.text)
    live = (("phase", "transfer"), ("source", "holder"), ("target", "node2"), ("vm", "web1"))
    assert found["corral_migration_data_total_bytes", live] == 256 * 2**20
    assert found["corral_migration_data_remaining_bytes", live] == 100 * 2**20
    assert found["corral_migration_memory_transfer_rate_bytes", live] == 800e6 / 8
    assert found["corral_migration_expected_downtime_seconds", live] == 0.25
    assert found["corral_migration_pass", live] == 3
    assert found["corral_migration_throttle_ratio", live] == 0.2
    assert found["corral_migrations_total", (("outcome", "succeeded"), ("reason", "none"))] == 2
    rolled = (("outcome", "rolled_back"), ("reason", "migration_failed"))
    assert found["corral_migrations_total", rolled] == 1
    cancelled = (("outcome", "rolled_back"), ("reason", "cancelled"))
    assert found["corral_migrations_total", cancelled] == 1
    assert found["corral_migration_downtime_seconds_bucket", (("le", "0.05"),)] == 1
    assert found["corral_migration_downtime_seconds_bucket", (("le", "+Inf"),)] == 2
    assert found["corral_migration_downtime_seconds_sum", ()] == pytest.approx(0.16)
    assert found["corral_migration_duration_seconds_count", ()] == 2
    assert found["corral_tasks", (("kind", "migration.send"), ("state", "succeeded"))] == 2
    assert found["corral_vms", (("state", "running"),)] == 0
    assert found["corral_node_draining", ()] == 0


def _running(agent: NodeAgent) -> str:
    migration(agent, "web1", TaskState.RUNNING)
    task = agent.tasks.recent(limit=1)[0]
    agent.tasks.set_progress(
        task.id,
        {
            "phase": "transfer",
            "done": 156 * 2**20,
            "total": 256 * 2**20,
            "remaining": 100 * 2**20,
            "mbps": 800.0,
            "dirty_rate_bytes": 4 * 2**20,
            "expected_downtime_ms": 250,
            "iteration": 3,
            "throttle_percent": 20,
            "eta_s": 1.5,
        },
    )
    return task.id


def test_a_member_may_scrape_and_a_stranger_may_not(agent: NodeAgent) -> None:
    member = TestClient(peer_app(agent, certificate(agent, "prom", "127.0.0.5")))
    answer = member.get("/metrics")
    assert answer.status_code == 200
    found = samples(answer.text)
    assert found["corral_peer_online", (("peer", "prom"),)] == 0  # never heard from
    stranger = TestClient(peer_app(agent, certificate(agent, "x", "127.0.0.6", admit=False)))
    assert stranger.get("/metrics").status_code == 403
