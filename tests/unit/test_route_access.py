"""Every route says who may call it, docs/security.md shows the same table, and each route
refuses a caller its access does not allow (in process, the certificate a TLS connection
would carry put into the request)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from corral.agent.access import Access, access_table
from corral.agent.app import api_app, join_app
from corral.agent.node_agent import NodeAgent
from tests.unit.member_apps import certificate, member_agent, peer_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
VALUES = {"name": "peer", "vm": "vm1", "task_id": "0123456789ab", "checkpoint": "c1"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    a = member_agent(tmp_path_factory.mktemp("access"))
    yield a
    a.close()


@pytest.fixture(scope="module")
def member(agent: NodeAgent) -> TestClient:
    return TestClient(peer_app(agent, certificate(agent, "peer", "127.0.0.2")))


def routes(agent: NodeAgent) -> list[tuple[str, str, Access]]:
    return access_table(api_app(agent, "local")) + access_table(join_app(agent))


def documented() -> dict[tuple[str, str], str]:
    """(method, path) -> access, from the table in docs/security.md."""
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) ([^`]+)` \| ([^|]+?) \|", DOC.read_text(), re.M)
    return {(method, path): access for method, path, access in rows}


def test_every_route_is_in_the_documented_table_with_its_access(agent: NodeAgent) -> None:
    in_code = {(m, p): a.value for m, p, a in routes(agent)}
    assert documented() == in_code


def test_routes_for_the_local_cli_refuse_a_member(agent: NodeAgent, member: TestClient) -> None:
    local = [(m, p) for m, p, a in routes(agent) if a is Access.LOCAL]
    assert {("POST", "/v1/cluster/tokens"), ("DELETE", "/v1/nodes/{name}")} <= set(local)
    before = agent.registry.snapshot(), agent.db.query("SELECT COUNT(*) FROM join_tokens")[0][0]
    for method, path in local:
        answer = member.request(method, path.format(**VALUES), json={})
        assert answer.status_code == 403, (method, path, answer.text)
        assert "only the local CLI" in answer.json()["error"]["message"]
    after = agent.registry.snapshot(), agent.db.query("SELECT COUNT(*) FROM join_tokens")[0][0]
    assert after == before


def test_routes_for_the_ca_holder_refuse_another_member(
    agent: NodeAgent, member: TestClient
) -> None:
    holder_only = [(m, p) for m, p, a in routes(agent) if a is Access.CA_HOLDER]
    assert holder_only == [("PUT", "/v1/registry")]
    body = {"version": 99, "members": [], "revoked": []}
    answer = member.put("/v1/registry", json=body)
    assert answer.status_code == 403
    assert agent.registry.version < 99
    assert TestClient(api_app(agent, "local")).put("/v1/registry", json=body).status_code == 403


def test_member_routes_refuse_a_certificate_of_no_member(agent: NodeAgent) -> None:
    stranger = certificate(agent, "stranger", "127.0.0.9", admit=False)
    for cert in (stranger, None):
        client = TestClient(peer_app(agent, cert))
        for method, path, _ in access_table(api_app(agent, "peer")):
            answer = client.request(method, path.format(**VALUES), json={})
            assert answer.status_code == 403, (method, path)
            assert "not a current member" in answer.json()["error"]["message"]


def test_a_member_may_create_only_the_task_kinds_peers_need(
    agent: NodeAgent, member: TestClient
) -> None:
    kinds = {k["name"]: k["from_peers"] for k in member.get("/v1/tasks/kinds").json()}
    assert {name for name, allowed in kinds.items() if allowed} == {"sleep", "migration.receive"}
    refused = member.post("/v1/tasks", json={"kind": "migration.send", "args": {}})
    assert refused.status_code == 403
    made = member.post("/v1/tasks", json={"kind": "sleep", "args": {"seconds": 0}})
    assert made.status_code == 201
    assert made.json()["owner"] == "peer"  # who it is, by its certificate


def test_a_member_request_is_never_forwarded(member: TestClient) -> None:
    answer = member.get("/v1/health", headers={"x-corral-node": "elsewhere"})
    assert answer.status_code == 403
    assert "forwarded" in answer.json()["error"]["message"]


def test_the_join_port_bounds_bodies_and_describes_nothing(agent: NodeAgent) -> None:
    join = TestClient(join_app(agent))
    assert join.post("/v1/join", content=b"x" * (64 * 1024 + 1)).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(70):
            yield b"x" * 1024

    assert join.post("/v1/join", content=chunks()).status_code == 413
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert join.get(path).status_code == 404


def test_a_join_address_is_compared_in_its_canonical_spelling() -> None:
    from corral.agent.api_models import normalized_ip

    assert normalized_ip("::ffff:10.0.0.7") == "10.0.0.7"
    assert normalized_ip("fe80:0:0::1") == "fe80::1"
    assert normalized_ip("not an address") == ""


def test_only_the_member_that_created_a_receive_task_may_release_it(
    agent: NodeAgent, member: TestClient
) -> None:
    other = TestClient(peer_app(agent, certificate(agent, "other", "127.0.0.3")))
    # A receive task "other" created (its arguments are never run: the runner is not started).
    task = agent.tasks.create("migration.receive", {"spec": {"name": "vm1"}}, "other")
    path = f"/v1/runtime/incoming/{task.id}/release"
    refused = member.post(path)
    assert refused.status_code == 403
    assert "did not start the migration" in refused.json()["error"]["message"]
    assert not agent.releases.wait(task.id, 0, lambda: False)  # nothing was released
    assert other.post(path).status_code == 200
    assert agent.releases.wait(task.id, 0, lambda: False)
    sleeping = member.post("/v1/tasks", json={"kind": "sleep", "args": {"seconds": 0}}).json()
    assert member.post(f"/v1/runtime/incoming/{sleeping['id']}/release").status_code == 404
