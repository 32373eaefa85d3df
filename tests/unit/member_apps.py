"""An agent in process that holds a cluster's CA, with a second member admitted, and its
apps as a given certificate reaches them: the peer app gets the certificate a TLS
connection would have carried (the scope key PeerCertProtocol sets)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from corral.agent.app import api_app, join_app
from corral.agent.http_guards import PEER_CERT_KEY, Receive, Scope, Send
from corral.agent.node_agent import NodeAgent
from corral.agent.settings import AgentSettings
from corral.agent.task_kinds import builtin_kinds
from corral.cluster.pki import ClusterCA, fingerprint, make_key_and_csr
from corral.cluster.registry import Member


def member_agent(root: Path, name: str = "holder", **extra: Any) -> NodeAgent:
    settings = AgentSettings(
        node_name=name,
        state_dir=root / "state",
        run_dir=root / "run",
        storage_dir=root / "storage",
        accelerator="tcg",
        address="127.0.0.1",
        **extra,
    )
    agent = NodeAgent(settings, builtin_kinds)
    agent.init_cluster("unit")
    return agent


def certificate(agent: NodeAgent, name: str, address: str, admit: bool = True) -> bytes:
    """A certificate (DER) the agent's CA signs for `name`; recorded as a member if
    `admit` (as a join would), else signed by the CA but nobody's."""
    ca = ClusterCA.load(agent.pki)
    _, csr = make_key_and_csr(name)
    pem = ca.sign(csr, name, address)
    if admit:
        agent.pki.record_issued(pem)
        agent.registry.admit(Member(name, address, 4710, time.time(), fingerprint(pem)))
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def as_peer(app: Any, cert: bytes | None) -> Any:
    """`app` as reached over mutual TLS with `cert` as the client certificate."""

    async def with_cert(scope: Scope, receive: Receive, send: Send) -> None:
        scope[PEER_CERT_KEY] = cert
        await app(scope, receive, send)

    return with_cert


def peer_app(agent: NodeAgent, cert: bytes | None) -> Any:
    return as_peer(api_app(agent, "peer"), cert)


def join_app_with_schema(agent: NodeAgent) -> Any:
    """The join app, plus its OpenAPI description at /openapi.json (which the real join
    port does not serve) so a fuzzer can read it."""
    app: FastAPI = join_app(agent)
    schema = app.openapi()

    async def described(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/openapi.json":
            import json

            body = json.dumps(schema).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return described
