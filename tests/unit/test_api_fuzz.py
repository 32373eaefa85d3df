"""The agent's API fuzzed from its own OpenAPI description (schemathesis): no request the
schema allows, or nearly allows, gets a 5xx, and a refused request changes no state.

In process (the ASGI app of a real agent over real SQLite), so no TLS. The agent is kept
out of any cluster (`cluster/init` is not fuzzed) and operations that reach another host
(joining, migrating) are left out, so no fuzzed address is ever contacted: a member's
address only matters once the node is in a cluster, where every such call refuses (409).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from corral.agent.app import api_app
from corral.agent.node_agent import NodeAgent
from corral.agent.settings import AgentSettings
from corral.agent.task_kinds import builtin_kinds

REACHES_OTHER_HOSTS = ("/v1/cluster/join", "/v1/cluster/init", "/v1/migrations")


def _agent(root: Path) -> NodeAgent:
    settings = AgentSettings(
        node_name="fuzz",
        state_dir=root / "state",
        run_dir=root / "run",
        storage_dir=root / "storage",
        accelerator="tcg",
        address="127.0.0.1",
    )
    return NodeAgent(settings, builtin_kinds)


ROOT = Path(tempfile.mkdtemp(prefix="corral-fuzz-"))
AGENT = _agent(ROOT)
schema = schemathesis.openapi.from_asgi("/openapi.json", api_app(AGENT, "local"))


def state_of(agent: NodeAgent) -> tuple[int, ...]:
    tables = ("tasks", "vms", "nodes", "join_tokens", "migrations")
    return tuple(int(agent.db.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables)


@pytest.fixture(scope="module", autouse=True)
def runner() -> Iterator[None]:
    AGENT.runner.start()
    yield
    AGENT.runner.stop(grace=2)
    for record in AGENT.vms.inventory.all():  # a fuzzed create + start may have booted one
        AGENT.vms.kill(record.name)
    shutil.rmtree(ROOT, ignore_errors=True)


@schema.exclude(path_regex="|".join(REACHES_OTHER_HOSTS)).parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_no_change_from_a_refused_request(
    case: schemathesis.Case,  # type: ignore[type-arg]
) -> None:
    before = state_of(AGENT)
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        assert state_of(AGENT) == before, (case.method, case.path, response.status_code)
