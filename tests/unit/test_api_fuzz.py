"""The agent's API fuzzed from its own OpenAPI description (schemathesis): no request the
schema allows, or nearly allows, gets a 5xx, and a refused request changes no state. Three
faces of it, as three callers reach them:

- the local app (the unix socket), on an agent kept out of any cluster (`cluster/init` is
  not fuzzed), so no fuzzed address is ever contacted;
- the peer app (port 4710) as a member that does not hold the CA reaches it, on an agent
  that holds the CA: the client certificate a TLS connection would carry is put into each
  request (tests/unit/member_apps.py);
- the join app (port 4711), which anyone reaches.

In process (the ASGI apps of real agents over real SQLite), so no TLS. Operations that reach
another host (joining, migrating) are left out.
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
from tests.unit.member_apps import certificate, join_app_with_schema, member_agent, peer_app

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
AGENT = _agent(ROOT / "local")
MEMBER = member_agent(ROOT / "member")
PEER = peer_app(MEMBER, certificate(MEMBER, "peer", "127.0.0.2"))
schema = schemathesis.openapi.from_asgi("/openapi.json", api_app(AGENT, "local"))
peer_schema = schemathesis.openapi.from_asgi("/openapi.json", PEER)
join_schema = schemathesis.openapi.from_asgi("/openapi.json", join_app_with_schema(MEMBER))


def state_of(agent: NodeAgent) -> tuple[object, ...]:
    tables = ("tasks", "vms", "nodes", "join_tokens", "migrations", "revoked_certs")
    counts = tuple(int(agent.db.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables)
    return (*counts, agent.registry.snapshot())


def _stop_everything(agent: NodeAgent) -> None:
    agent.runner.stop(grace=2)
    for record in agent.vms.inventory.all():  # a fuzzed create + start may have booted one
        agent.vms.kill(record.name)
    runtime = agent.dirs.run / "vms"
    for folder in runtime.iterdir() if runtime.exists() else ():
        agent.driver.kill(agent.dirs.layout(folder.name))  # an incoming VM a task started
    agent.close()


@pytest.fixture(scope="module", autouse=True)
def runner() -> Iterator[None]:
    AGENT.runner.start()
    MEMBER.runner.start()
    yield
    _stop_everything(AGENT)
    _stop_everything(MEMBER)
    shutil.rmtree(ROOT, ignore_errors=True)


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def _check(agent: NodeAgent, case: schemathesis.Case) -> None:  # type: ignore[type-arg]
    before = state_of(agent)
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        assert state_of(agent) == before, (case.method, case.path, response.status_code)


@schema.exclude(path_regex="|".join(REACHES_OTHER_HOSTS)).parametrize()
@FUZZ
def test_no_5xx_and_no_change_from_a_refused_request(
    case: schemathesis.Case,  # type: ignore[type-arg]
) -> None:
    _check(AGENT, case)


@peer_schema.exclude(path_regex="|".join(REACHES_OTHER_HOSTS)).parametrize()
@FUZZ
def test_a_member_gets_no_5xx_and_changes_nothing_when_refused(
    case: schemathesis.Case,  # type: ignore[type-arg]
) -> None:
    _check(MEMBER, case)


@join_schema.parametrize()
@FUZZ
def test_the_join_port_gives_no_5xx_and_admits_nobody_without_a_token(
    case: schemathesis.Case,  # type: ignore[type-arg]
) -> None:
    before = state_of(MEMBER)
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if case.path == "/v1/join":
        assert 400 <= response.status_code < 500, response.text[:300]
        assert state_of(MEMBER) == before
