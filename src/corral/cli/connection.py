"""Which agent the CLI talks to.

In order: `CORRAL_SOCKET` (a unix socket path); the local agent's socket
(/run/corral/agent.sock); else, on a machine with a lab up, the lab node's agent. `--node NAME`
(or `CORRAL_NODE`) asks the chosen agent to forward the request to member NAME; with a lab,
it talks to that node's own socket directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from corral import config
from corral.api_errors import Unreachable
from corral.client import DEFAULT_SOCKET, AgentClient

NodeOption = Annotated[
    str | None,
    typer.Option(
        "--node",
        envvar="CORRAL_NODE",
        help="Ask this cluster member instead of the local node.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]


def agent_client(node: str | None) -> AgentClient:
    """A client of the agent that should answer (see the module docstring).

    :raise Unreachable: no agent socket could be found.
    """
    explicit = os.environ.get("CORRAL_SOCKET")
    if explicit:
        return AgentClient(socket_path=Path(explicit), node=node)
    if DEFAULT_SOCKET.exists():
        return AgentClient(socket_path=DEFAULT_SOCKET, node=node)
    from corral.lab.agents import agent_socket  # a lab only: not every command's cost
    from corral.lab.lifecycle import load_plan

    plan = load_plan(config.lab_root()) if os.geteuid() == 0 else None
    if plan is not None:
        lab_node = plan.node(node or plan.nodes[0].name)
        return AgentClient(socket_path=agent_socket(lab_node))
    raise Unreachable(
        f"no agent socket at {DEFAULT_SOCKET}: start one with 'corral agent'"
        " (or set CORRAL_SOCKET, or bring a lab up with 'corral lab up')"
    )
