"""`corral cluster ...` and `corral node ...`: membership."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from corral.cli.connection import JsonOption, NodeOption, agent_client
from corral.cli.drain_commands import drain_command, undrain_command
from corral.cli.output import console, print_json, print_table
from corral.cli.tables import node_table

cluster_app = typer.Typer(
    help="Create a cluster and see this node's membership.",
    no_args_is_help=True,
    add_completion=False,
)
node_app = typer.Typer(
    help="Add, list and remove the cluster's nodes; drain one for maintenance.",
    no_args_is_help=True,
    add_completion=False,
)
node_app.command("drain")(drain_command)
node_app.command("undrain")(undrain_command)


@cluster_app.command("init")
def init_command(
    name: Annotated[str, typer.Option(help="The cluster's name.")] = "corral",
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make the cluster's certificate authority and this node's certificate; this node
    becomes the first member and the one that admits others."""
    with agent_client(node) as client:
        status = client.post("/cluster/init", {"name": name})
    if json_out:
        print_json(status)
        return
    console.print(f"cluster {name!r} created; {status['node']} is its first member")
    console.print(f"CA fingerprint {status['ca_fingerprint']}")
    console.print(
        "add nodes: 'corral node token' here, then 'corral node join "
        f"{status['address']} --token TOKEN' on the new node"
    )


@cluster_app.command("status")
def status_command(node: NodeOption = None, json_out: JsonOption = False) -> None:
    """Whether this node is in a cluster, the cluster CA's fingerprint, and where the
    cluster's state is agreed: gossip (the members this node watches, those it cannot
    reach, its heartbeats, news and claims since it started) or etcd (reachable, this
    node's lease)."""
    with agent_client(node) as client:
        status = client.get("/cluster")
    if json_out:
        print_json(status)
        return
    state = status.pop("state", None) or {"mode": "gossip"}
    for key, value in status.items():
        console.print(f"{key:15} {value}")
    if state.get("mode") != "etcd":
        console.print(f"{'state':15} gossip (between the agents)")
        watching = ", ".join(state.get("watching") or []) or "none"
        console.print(f"{'watching':15} {watching}", markup=False)
        unreachable = ", ".join(state.get("unreachable") or []) or "none"
        console.print(f"{'unreachable':15} {unreachable}", markup=False)
        counts = state.get("heartbeats") or {}
        if counts:
            since = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
            console.print(f"{'since start':15} {since}", markup=False)
        return
    health = "reachable" if state.get("reachable") else "UNREACHABLE"
    lease = state.get("lease") if state.get("lease_alive") else "none alive"
    console.print(f"{'state':15} etcd, {health}, lease {lease}")
    console.print(f"{'etcd':15} {', '.join(state.get('endpoints') or [])}", markup=False)
    if state.get("error"):
        console.print(f"{'etcd error':15} {state['error']}", markup=False)


@node_app.command("token")
def token_command(
    ttl: Annotated[float, typer.Option(help="Seconds until the token expires.")] = 3600,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Print a single-use join token (run on the node that ran 'cluster init')."""
    with agent_client(node) as client:
        answer = client.post("/cluster/tokens", {"ttl_seconds": ttl})
    if json_out:
        print_json(answer)
        return
    typer.echo(answer["token"])
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(answer["expires_at"]))
    typer.echo(f"# single use, expires {expires}", err=True)


@node_app.command("join")
def join_command(
    address: Annotated[str, typer.Argument(help="A member's address: HOST or HOST:JOINPORT.")],
    token: Annotated[str, typer.Option(help="The token from 'corral node token'.")],
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Join this node to the cluster a member of which answers at ADDRESS."""
    with agent_client(node) as client:
        answer = client.post("/cluster/join", {"address": address, "token": token}, timeout=60)
    if json_out:
        print_json(answer)
        return
    console.print(f"{answer['node']} joined; members: {', '.join(answer['members'])}")


@node_app.command("list")
def list_command(
    node: NodeOption = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every column.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Every member: state (online, draining), when last heard from, memory, VMs; --wide
    adds address, architecture, CPU, hypervisor and VM storage."""
    with agent_client(node) as client:
        nodes = client.get("/nodes")
    if json_out:
        print_json(nodes)
        return
    print_table(node_table(nodes, wide=wide), wide=wide)


@node_app.command("remove")
def remove_command(
    name: Annotated[str, typer.Argument(help="The member to remove.")],
    force: Annotated[bool, typer.Option(help="Remove it even though it owns VMs.")] = False,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a member from the cluster (refused while it owns VMs, unless --force)."""
    with agent_client(node) as client:
        answer = client.delete(f"/nodes/{name}", force=str(force).lower())
    if json_out:
        print_json(answer)
        return
    console.print(f"removed {name}")
