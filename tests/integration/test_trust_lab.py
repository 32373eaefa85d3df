"""Trust, tried as an attacker would on a real lab (three agents, real mutual TLS): each
attack is refused with the reason, and the tables of every node it aimed at are unchanged.

node1 holds the CA; node3 plays the member (or, at the end, the removed member) that
attacks; node2 is the victim whose address or membership it wants."""

from __future__ import annotations

import json
import os
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from corral.cluster.pki import make_key_and_csr
from corral.lab import agents
from corral.lab.image import GuestImage
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.trust_helpers import (
    JOIN_PORT,
    Answer,
    call,
    pki_of,
    tables,
)
from tests.integration.vm_helpers import guest_args
from tests.lab_cluster import running_cluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "ctrust", 3) as plan:
        yield plan


def corral(node: LabNode, *args: str) -> subprocess.CompletedProcess[str]:
    return agents.run_cli(node, *args, timeout=120)


def as_node3(lab: LabPlan, target: LabNode, method: str, path: str, **kw: Any) -> Answer:
    """A request to `target` presenting node3's certificate, from node3's namespace."""
    node3 = lab.nodes[2]
    return call(
        lab, origin=node3, target=target, method=method, path=path, cert_of=pki_of(node3), **kw
    )


def refused(answer: Answer, status: int, *words: str) -> None:
    assert answer.status == status, answer
    for word in words:
        assert word in answer.message, answer


def test_a_member_cannot_rewrite_another_members_address(lab: LabPlan) -> None:
    node1, node2, node3 = lab.nodes
    before = {n.name: tables(n) for n in (node1, node2)}
    registry = as_node3(lab, node2, "GET", "/v1/registry")
    assert registry.status == 200
    forged = dict(registry.body, version=registry.body["version"] + 1)
    for member in forged["members"]:
        if member["name"] == "node2":
            member["address"] = str(node3.migration_address.ip)
    for victim in (node1, node2):
        refused(
            as_node3(lab, victim, "PUT", "/v1/registry", body=forged), 403, "holds the cluster CA"
        )
        # The old upsert route is gone.
        old = {"name": "node2", "address": str(node3.migration_address.ip), "port": 4710}
        assert as_node3(lab, victim, "POST", "/v1/nodes", body=old).status in (404, 405)
    assert {n.name: tables(n) for n in (node1, node2)} == before


def test_a_member_cannot_mint_tokens_or_run_cluster_administration(lab: LabPlan) -> None:
    node1, node2, _ = lab.nodes
    before = tables(node1)
    attempts = [
        ("POST", "/v1/cluster/tokens", {"ttl_seconds": 600}),
        ("POST", "/v1/cluster/init", {"name": "mine"}),
        ("POST", "/v1/cluster/join", {"address": "10.210.0.3", "token": "x"}),
        ("DELETE", "/v1/nodes/node2?force=true", None),
    ]
    for method, path, body in attempts:
        refused(as_node3(lab, node1, method, path, body=body), 403, "local CLI")
    # Nor through another member: members' requests are never forwarded.
    relayed = as_node3(
        lab, node2, "POST", "/v1/cluster/tokens", body={}, headers={"x-corral-node": "node1"}
    )
    refused(relayed, 403, "forwarded")
    assert tables(node1) == before
    # A member that is not the CA holder cannot make tokens even on its own socket.
    out = corral(node2, "node", "token")
    assert out.returncode == 4
    assert "run this on node1" in out.stderr


def test_a_member_cannot_make_a_vm_read_the_ca_key(lab: LabPlan) -> None:
    node1, _, node3 = lab.nodes
    ca_key = str(pki_of(node1).ca_key)
    before = tables(node1)
    vm = {"name": "steal", "memory_mib": 64, "disks": [{"path": ca_key, "format": "raw"}]}
    refused(as_node3(lab, node1, "POST", "/v1/vms", body=vm), 403, "disks.0.path", "host files")
    kernel = {"name": "steal", "boot": {"kernel": ca_key}}
    refused(as_node3(lab, node1, "POST", "/v1/vms", body=kernel), 403, "boot.kernel")
    # A migration's receive task carries a spec: its files are checked the same way.
    spec = {"name": "steal", "disks": [{"path": ca_key, "format": "raw"}]}
    args = {"migration_id": "0123456789ab", "spec": spec, "source": "node3"}
    task = {"kind": "migration.receive", "args": args}
    refused(as_node3(lab, node1, "POST", "/v1/tasks", body=task), 422, "agent's own state")
    other = {"kind": "vm.start", "args": {"vm": "steal"}}
    refused(as_node3(lab, node1, "POST", "/v1/tasks", body=other), 403, "vm.start")
    adopt = {"spec": spec}
    refused(as_node3(lab, node1, "POST", "/v1/runtime/steal/adopt", body=adopt), 422, "state")
    assert tables(node1) == before
    # Root on node1 itself may name files, but only inside the image directories, and a
    # link from inside them to the key is followed, and refused.
    data_dir = lab.shared_dir / "data"
    link = data_dir / "innocent.img"
    link.symlink_to(ca_key)
    try:
        for path, words in (
            (ca_key, "agent's own state"),
            ("/etc/shadow", "outside the image directories"),
            (str(link), "agent's own state"),
        ):
            out = corral(node1, "vm", "create", "steal", "--disk-path", path)
            assert out.returncode == 2, out
            assert "disks.0.path" in out.stderr
            assert words in out.stderr
    finally:
        link.unlink()
    assert tables(node1) == before
    assert tables(node3)["vms"] == []


def join_body(lab: LabPlan, token: str, name: str, address: str) -> dict[str, Any]:
    token_id, secret, _ = token.split(".")
    _, csr = make_key_and_csr(name)
    return {
        "token_id": token_id,
        "secret": secret,
        "node_name": name,
        "address": address,
        "api_port": 4710,
        "csr": csr.decode(),
    }


def join(lab: LabPlan, origin: LabNode, body: Any = None, raw: bytes | None = None) -> Answer:
    return call(
        lab,
        origin=origin,
        target=lab.nodes[0],
        method="POST",
        path="/v1/join",
        cert_of=None,
        body=body,
        raw_body=raw,
        port=JOIN_PORT,
    )


def test_a_join_with_a_stolen_address_is_refused_and_the_token_kept(lab: LabPlan) -> None:
    node1, node2, node3 = lab.nodes
    token = corral(node1, "node", "token").stdout.strip()
    before = tables(node1)
    node2_ip = str(node2.migration_address.ip)
    # From node3's host, claiming node2's address (to get a certificate valid for it).
    stolen = join(lab, node3, join_body(lab, token, "evil", node2_ip))
    refused(stolen, 403, f"claims {node2_ip}", f"came from {node3.migration_address.ip}")
    # From node2's own address: an address that is a member's is no newcomer's.
    taken = join(lab, node2, join_body(lab, token, "evil", node2_ip))
    refused(taken, 409, "is member node2's")
    # A wrong token says nothing about names or addresses: it is checked first.
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    refused(join(lab, node2, join_body(lab, flipped, "node1", node2_ip)), 403, "join token")
    after = tables(node1)
    assert after == before  # the token is still unused
    assert next(t for t in after["join_tokens"] if t[0] == token.split(".")[0])[1] is None


def test_the_join_port_bounds_bodies_and_serves_nothing_else(lab: LabPlan) -> None:
    node1, _, node3 = lab.nodes
    before = tables(node1)
    big = json.dumps({"token_id": "0" * 8, "pad": "x" * 1_000_000}).encode()
    refused(join(lab, node3, raw=big), 413, "larger than 65536 bytes")
    for path in ("/docs", "/openapi.json", "/redoc", "/v1/health", "/v1/nodes"):
        answer = call(
            lab, origin=node3, target=node1, method="GET", path=path, cert_of=None, port=JOIN_PORT
        )
        assert answer.status == 404, (path, answer)
    ca = call(
        lab,
        origin=node3,
        target=node1,
        method="GET",
        path="/v1/join/ca",
        cert_of=None,
        port=JOIN_PORT,
    )
    assert ca.status == 200
    assert "BEGIN CERTIFICATE" in str(ca.body)
    assert tables(node1) == before


def test_an_address_presenting_another_nodes_certificate_is_not_that_node(
    lab: LabPlan, guest_image: GuestImage
) -> None:
    """node1 is made to believe node2 lives at node3's address (as if node3's host had
    taken the address over): HTTPS to "node2" there fails the name check, node2 goes
    offline on node1, and a migration to node2 is refused; nothing reaches node3."""
    node1, node2, node3 = lab.nodes
    with pytest.raises(ssl.SSLCertVerificationError, match="node2"):
        call(
            lab,
            origin=node1,
            target=node3,
            method="GET",
            path="/v1/health",
            cert_of=pki_of(node1),
            server_name="node2",
        )
    out = corral(node1, "vm", "create", "web", *guest_args(guest_image, disk=False), "--start")
    assert out.returncode == 0, out.stderr
    node3_before = tables(node3)
    db = sqlite3.connect(node1.local_dir / "state" / "corral.db")
    try:
        with db:
            db.execute(
                "UPDATE nodes SET address = ? WHERE name = 'node2'",
                (str(node3.migration_address.ip),),
            )

        def node2_offline() -> bool:
            listed = json.loads(corral(node1, "node", "list", "--json").stdout)
            return not next(n for n in listed if n["name"] == "node2")["online"]

        wait_for(node2_offline, timeout=30, what="node1 to stop believing node3 is node2")
        moved = corral(node1, "migrate", "web", "node2")
        assert moved.returncode != 0
        assert "node2" in moved.stderr
        shown = json.loads(corral(node1, "vm", "show", "web", "--json").stdout)
        assert (shown["owner"], shown["observed"]) == ("node1", "running")
        assert corral(node3, "vm", "show", "web", "--node", "node3").returncode == 3
        assert tables(node3)["tasks"] == node3_before["tasks"]
    finally:
        with db:
            db.execute(
                "UPDATE nodes SET address = ? WHERE name = 'node2'",
                (str(node2.migration_address.ip),),
            )
        db.close()
        corral(node1, "vm", "kill", "web")
        corral(node1, "vm", "delete", "web")


def test_a_removed_node_is_out_at_once_on_every_route(lab: LabPlan) -> None:
    """Last: node3 leaves the cluster for good."""
    node1, node2, node3 = lab.nodes
    agents.stop_agent(node2)  # offline during the removal: it must learn of it later
    assert corral(node1, "node", "remove", "node3").returncode == 0
    openapi = call(
        lab,
        origin=node1,
        target=node1,
        method="GET",
        path="/openapi.json",
        cert_of=pki_of(node1),
    )
    assert openapi.status == 200
    values = {"name": "node2", "vm": "vm1", "task_id": "0123456789ab", "checkpoint": "c1"}
    routes = [
        (method.upper(), path.format(**values))
        for path, methods in openapi.body["paths"].items()
        for method in methods
    ]
    assert len(routes) > 25
    before = tables(node1)
    for method, path in routes:
        answer = as_node3(lab, node1, method, path, body={})
        refused(answer, 403, "not a current member")
    for path in ("/openapi.json", "/docs"):
        refused(as_node3(lab, node1, "GET", path), 403, "not a current member")
    assert tables(node1) == before
    # node2 was away: it follows the CA holder's list on its first heartbeat back.
    agents.start_agent(lab, node2)

    def node3_out_on_node2() -> bool:
        return as_node3(lab, node2, "GET", "/v1/health").status == 403

    wait_for(node3_out_on_node2, timeout=30, what="node2 to learn of the removal", interval=0.2)
    fingerprint = pki_of(node3).node_fingerprint
    for node in (node1, node2):
        assert (fingerprint,) in tables(node)["revoked_certs"]
        assert "node3" not in {row[0] for row in tables(node)["nodes"]}
    # The removed node's own agent cannot mint tokens, and cannot rejoin as it is.
    assert corral(node3, "node", "token").returncode != 0
    rejoin = corral(node3, "node", "join", str(node1.migration_address.ip), "--token", "x")
    assert rejoin.returncode != 0
    assert os.path.exists(pki_of(node3).node_cert)  # it still has the certificate, for nothing
