"""A three-node lab with real agents in network namespaces, joined by tokens, talking HTTPS
with mutual TLS: membership, heartbeats, tasks across nodes, crash recovery and security."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.pki import ClusterCA, PkiPaths, make_key_and_csr
from corral.commands import pid_alive
from corral.lab import agents, netns
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.lab_cluster import running_cluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cclus", 3) as plan:
        yield plan


def corral(node: LabNode, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a person on `node` runs it (its agent's socket)."""
    return agents.run_cli(node, *args, timeout=120)


def corral_json(node: LabNode, *args: str) -> Any:
    out = corral(node, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def https_status(
    plan: LabPlan, node: LabNode, port: int, ctx: ssl.SSLContext, path: str = "/v1/health"
) -> int:
    """The HTTP status of GET `path` on `node`'s `port`, from inside node1's namespace."""
    raw = netns.connect_in(plan.nodes[0].netns, str(node.migration_address.ip), port)
    with ctx.wrap_socket(raw, server_hostname=str(node.migration_address.ip)) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(100).decode()
    return int(head.split()[1])


def client_context(plan: LabPlan, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        cafile=str(PkiPaths(plan.nodes[0].local_dir / "state" / "pki").ca_cert)
    )
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_node_list_on_every_node_shows_all_three_online_with_facts(lab: LabPlan) -> None:
    for node in lab.nodes:
        nodes = corral_json(node, "node", "list")
        assert [n["name"] for n in nodes] == ["node1", "node2", "node3"]
        for n in nodes:
            assert n["online"], (node.name, n)
            facts = n["facts"]
            assert facts["arch"] == os.uname().machine
            assert facts["cpu_vendor"]
            assert facts["cpu_model"]
            assert facts["hypervisor"] == "qemu"
            assert facts["hypervisor_version"]
            assert facts["memory_total_mib"] > 0
            assert 0 < facts["memory_free_mib"] <= facts["memory_total_mib"]
            assert facts["vm_count"] == 0
    human = corral(lab.nodes[1], "node", "list")
    assert human.returncode == 0
    assert "online" in human.stdout


def test_node1_creates_a_task_on_node3_and_follows_it(lab: LabPlan) -> None:
    node1, node3 = lab.nodes[0], lab.nodes[2]
    created = corral_json(
        node1,
        "task",
        "create",
        "sleep",
        "--arg",
        "seconds=4",
        "--arg",
        "steps=8",
        "--node",
        "node3",
    )
    task_id = created["id"]
    assert created["owner"] == "node1"
    # Progress is visible from node1 while the task runs on node3.
    mid = wait_for(
        lambda: (
            (t := corral_json(node1, "task", "show", task_id, "--node", "node3"))["progress"].get(
                "done", 0
            )
            >= 1
            and t["state"] == "running"
            and t
        ),
        timeout=30,
        what="progress on node3",
    )
    assert mid["progress"]["total"] == 8
    waited = corral(node1, "task", "wait", task_id, "--node", "node3")
    assert waited.returncode == 0, waited.stderr
    log = corral(node1, "task", "logs", task_id, "--node", "node3")
    assert "step 8/8" in log.stdout
    # The task lives on node3, not on node1.
    assert task_id in {t["id"] for t in corral_json(node3, "task", "list")}
    assert task_id not in {t["id"] for t in corral_json(node1, "task", "list")}


def test_cancel_from_another_node_stops_a_running_task(lab: LabPlan) -> None:
    node1 = lab.nodes[0]
    task_id = corral_json(
        node1, "task", "create", "sleep", "--arg", "seconds=60", "--node", "node2"
    )["id"]
    wait_for(
        lambda: (
            corral_json(node1, "task", "show", task_id, "--node", "node2")["state"] == "running"
        ),
        timeout=30,
        what="the task to start",
    )
    assert corral(node1, "task", "cancel", task_id, "--node", "node2").returncode == 0
    waited = corral(node1, "task", "wait", task_id, "--node", "node2")
    assert waited.returncode == 12
    assert "cancelled" in waited.stdout


def test_kill_9_of_an_agent_mid_task_leaves_the_task_interrupted(lab: LabPlan) -> None:
    node1, node2 = lab.nodes[0], lab.nodes[1]
    task_id = corral_json(
        node1, "task", "create", "sleep", "--arg", "seconds=120", "--node", "node2"
    )["id"]
    wait_for(
        lambda: (
            corral_json(node1, "task", "show", task_id, "--node", "node2")["state"] == "running"
        ),
        timeout=30,
        what="the task to start",
    )
    pid = agents.agent_pid(node2)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the agent to die")
    down = corral(node1, "task", "show", task_id, "--node", "node2")
    assert down.returncode == 10  # node2 does not answer
    assert "did not answer" in down.stderr
    agents.start_agent(lab, node2)
    task = corral_json(node1, "task", "show", task_id, "--node", "node2")
    assert task["state"] == "interrupted"
    assert "not idempotent" in task["error"]
    assert [e["to"] for e in task["events"]] == ["queued", "running", "interrupted"]
    assert task["events"][-1]["reason"] == "the agent stopped while this task was running"
    wait_for(
        lambda: all(n["online"] for n in corral_json(node1, "node", "list")),
        timeout=30,
        what="node2 back online",
    )


def test_sigterm_stops_an_agent_gracefully(lab: LabPlan) -> None:
    node3 = lab.nodes[2]
    pid = agents.agent_pid(node3)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), timeout=20, what="the agent to exit")
    assert not agents.agent_socket(node3).exists()
    agents.start_agent(lab, node3)
    assert corral(node3, "node", "list").returncode == 0


def test_api_refuses_a_client_without_a_certificate(lab: LabPlan) -> None:
    node2 = lab.nodes[1]
    pki = PkiPaths(node2.local_dir / "state" / "pki")
    good = client_context(lab, pki.node_cert, pki.node_key)
    assert https_status(lab, node2, 4710, good) == 200
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, IndexError)):
        https_status(lab, node2, 4710, client_context(lab, None, None))


def test_api_refuses_a_certificate_from_another_ca(lab: LabPlan, tmp_path: Path) -> None:
    other = PkiPaths(tmp_path / "other")
    ClusterCA.create(other, "evil").issue_node(other, "node1", "10.210.0.1")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, IndexError)):
        https_status(lab, lab.nodes[1], 4710, client_context(lab, other.node_cert, other.node_key))


def _join_as(lab: LabPlan, token: str, name: str, host: int = 99) -> int:
    """POST /v1/join on node1's join port as a joiner named `name` at 10.210.0.HOST, sent
    from that address (added in node1's namespace); the HTTP status."""
    token_id, secret, _ = token.split(".")
    _, csr = make_key_and_csr(name)
    body = json.dumps(
        {
            "token_id": token_id,
            "secret": secret,
            "node_name": name,
            "address": f"10.210.0.{host}",
            "api_port": 4710,
            "csr": csr.decode(),
        }
    )
    node1 = lab.nodes[0]
    source = f"10.210.0.{host}"
    subprocess.run(
        ["ip", "-n", node1.netns, "addr", "replace", f"{source}/24", "dev", "mig0"], check=True
    )
    raw = netns.connect_in(node1.netns, str(node1.migration_address.ip), 4711, source=source)
    with client_context(lab, None, None).wrap_socket(
        raw, server_hostname=str(node1.migration_address.ip)
    ) as tls:
        tls.sendall(
            (
                f"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
            ).encode()
        )
        return int(tls.recv(100).decode().split()[1])


def test_tokens_are_single_use_expire_and_break_when_changed(lab: LabPlan) -> None:
    node1 = lab.nodes[0]
    token = corral(node1, "node", "token").stdout.strip()
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    assert _join_as(lab, flipped, "ghost") == 403
    assert _join_as(lab, token, "ghost") == 200
    assert _join_as(lab, token, "ghost2", host=98) == 403
    short = corral_json(node1, "node", "token", "--ttl", "1")
    wait_for(lambda: time.time() > short["expires_at"] + 0.1, timeout=10, what="expiry")
    assert _join_as(lab, short["token"], "late", host=97) == 403
    # The ghost that joined is a member (offline); removal is refused while it owns a VM.
    db = sqlite3.connect(node1.local_dir / "state" / "corral.db")
    with db:
        db.execute("INSERT INTO vms VALUES ('vm1', 'ghost', '{}', 'running', 0)")
    refused = corral(node1, "node", "remove", "ghost")
    assert refused.returncode == 4
    assert "owns 1 VM" in refused.stderr
    assert corral(node1, "node", "remove", "ghost", "--force").returncode == 0
    with db:
        db.execute("DELETE FROM vms WHERE name = 'vm1'")
    db.close()
    for node in lab.nodes:
        assert "ghost" not in {n["name"] for n in corral_json(node, "node", "list")}


def test_a_joiner_refuses_a_cluster_whose_ca_does_not_match_its_token(lab: LabPlan) -> None:
    token = corral(lab.nodes[0], "node", "token").stdout.strip()
    forged = token[:-64] + "0" * 64
    out = corral(lab.nodes[1], "node", "join", "10.210.0.1", "--token", forged)
    assert out.returncode == 4  # node2 is already a member: refused before anything
    assert "already in a cluster" in out.stderr


def test_unix_socket_is_for_root_only(lab: LabPlan) -> None:
    sock = agents.agent_socket(lab.nodes[0])
    mode = sock.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) & 0o077 == 0
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert _connect_as_nobody(sock) == "denied"
    assert _connect_as_nobody(Path("/nonexistent")) != "connected"


def _connect_as_nobody(sock: Path) -> str:
    """Try to connect to `sock` from a forked child running as user nobody."""
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report through the exit code
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            conn = socket.socket(socket.AF_UNIX)
            try:
                conn.connect(str(sock))
                code = 0
            except PermissionError:
                code = 1
            except OSError:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 1: "denied", 2: "error"}.get(os.waitstatus_to_exitcode(status), "?")


def test_api_input_is_validated_with_the_field_named(lab: LabPlan) -> None:
    node1 = lab.nodes[0]
    out = corral(node1, "task", "create", "sleep", "--arg", "seconds=lots", "--node", "node3")
    assert out.returncode == 2
    assert "args.seconds" in out.stderr
    out = corral(node1, "node", "token", "--ttl", "0")
    assert out.returncode == 2
    assert "ttl_seconds" in out.stderr
    out = corral(node1, "task", "show", "not-an-id")
    assert out.returncode == 2
    assert "task_id" in out.stderr


def test_openapi_is_served_under_its_usual_path(lab: LabPlan) -> None:
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(agents.agent_socket(lab.nodes[0])))
    raw.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := raw.recv(65536):
        data += chunk
    raw.close()
    spec = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert "/v1/tasks/{task_id}/cancel" in spec["paths"]
