"""The agent's API in process (FastAPI's test client, real SQLite, real runner): OpenAPI,
validation that names the field, and errors mapped to status codes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from corral.agent.app import api_app
from corral.agent.node_agent import NodeAgent
from corral.waiting import wait_for


@pytest.fixture
def api(agent: NodeAgent) -> TestClient:
    return TestClient(api_app(agent, "local"))


def test_openapi_describes_the_versioned_api(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/nodes", "/v1/cluster/join"} <= set(
        spec["paths"]
    )


def test_a_task_runs_and_its_owner_is_the_local_cli(api: TestClient) -> None:
    created = api.post("/v1/tasks", json={"kind": "sleep", "args": {"seconds": 0.1, "steps": 2}})
    assert created.status_code == 201
    task_id = created.json()["id"]
    assert created.json()["owner"] == "cli@unit"
    done = wait_for(
        lambda: (t := api.get(f"/v1/tasks/{task_id}").json())["state"] == "succeeded" and t,
        timeout=10,
        what="the task",
    )
    assert done["progress"]["done"] == 2
    assert "step 2/2" in api.get(f"/v1/tasks/{task_id}/log").json()["text"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "sleep", "args": {"seconds": "soon"}}, "args.seconds"),
        ({"kind": "sleep", "args": {"seconds": 1, "colour": 2}}, "args.colour"),
        ({"kind": "Bad Kind"}, "kind"),
        ({"kind": "sleep", "args": {"seconds": 1}, "after": "../../etc"}, "after"),
        ({"kind": "sleep", "unknown": 1}, "unknown"),
        ({}, "kind"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(
    api: TestClient, body: dict[str, object], field: str
) -> None:
    answer = api.post("/v1/tasks", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field
    assert api.get("/v1/tasks").json() == []


def test_unknown_task_is_404_and_malformed_id_422(api: TestClient) -> None:
    assert api.get("/v1/tasks/0123456789ab").status_code == 404
    bad = api.get("/v1/tasks/..%2F..%2Fetc")
    assert bad.status_code in (404, 422)


def test_membership_calls_before_a_cluster_exists_are_conflicts(api: TestClient) -> None:
    answer = api.post("/v1/cluster/tokens", json={"ttl_seconds": 60})
    assert answer.status_code == 409
    assert "cluster init" in answer.json()["error"]["message"]


def test_forwarding_to_an_unknown_member_is_refused(api: TestClient) -> None:
    answer = api.get("/v1/tasks", headers={"x-corral-node": "elsewhere"})
    assert answer.status_code == 409  # not in a cluster at all yet


def test_init_makes_this_node_the_first_member(api: TestClient, agent: NodeAgent) -> None:
    status = api.post("/v1/cluster/init", json={"name": "unit"}).json()
    assert status["member"] is True
    assert status["holds_ca"] is True
    nodes = api.get("/v1/nodes").json()
    assert [(n["name"], n["self"], n["online"]) for n in nodes] == [("unit", True, True)]
    assert nodes[0]["facts"]["hypervisor"] == "qemu"
    again = api.post("/v1/cluster/init", json={"name": "unit"})
    assert again.status_code == 409
    token = api.post("/v1/cluster/tokens", json={"ttl_seconds": 60}).json()["token"]
    assert token.endswith(status["ca_fingerprint"])


def test_a_name_whose_config_is_on_the_shared_storage_is_refused_and_kept(
    api: TestClient, agent: NodeAgent
) -> None:
    # Another node's VM (on shared storage), not in this node's records.
    spec_file = agent.dirs.spec_file("taken")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text('{"name": "taken"}\n')
    answer = api.post("/v1/vms", json={"name": "taken", "memory_mib": 64})
    assert answer.status_code == 409, answer.text
    assert "already has its config at" in answer.json()["error"]["message"]
    assert spec_file.read_text() == '{"name": "taken"}\n'  # untouched
    assert api.get("/v1/vms/taken?here=true").status_code == 404
