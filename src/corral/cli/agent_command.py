"""`corral agent`: run the node daemon in the foreground (systemd and rc.d start it so)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer


def agent_command(
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML settings file (env CORRAL_CONFIG; default "
            "/etc/corral/agent.toml if present).",
            show_default=False,
        ),
    ] = None,
    node_name: Annotated[str | None, typer.Option(help="This node's name.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Address peers reach this agent at (and it listens on).")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="mTLS API port (4710).")] = None,
    join_port: Annotated[int | None, typer.Option(help="Join port (4711).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="(/var/lib/corral)")] = None,
    storage_dir: Annotated[Path | None, typer.Option(help="(/var/lib/corral/storage)")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="(/run/corral)")] = None,
    hypervisor: Annotated[
        str | None,
        typer.Option(help="qemu, bhyve, or auto: bhyve on FreeBSD, QEMU elsewhere (auto)."),
    ] = None,
    max_parallel_tasks: Annotated[int | None, typer.Option(help="Tasks run at once (2).")] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(help="Seconds (2).")] = None,
    offline_after: Annotated[
        float | None, typer.Option(help="Seconds without news before a peer is offline (3 beats).")
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            help="Where membership, online state and VM ownership are agreed: gossip (between"
            " the agents, no other component) or etcd (past a rack; needs --etcd-endpoints)"
            " (default: gossip).",
        ),
    ] = None,
    etcd_endpoints: Annotated[
        str | None,
        typer.Option(
            help="With --state etcd: https://HOST:PORT,... of the etcd members (mutual TLS with"
            " this node's cluster certificate).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run this node's agent: the API on a root-only unix socket and, once the node is in a
    cluster, HTTPS with mutual TLS for peers; the task runner; heartbeats to every peer.
    Settings: defaults < TOML file < CORRAL_<NAME> environment variables < these flags."""
    from corral import hostos
    from corral.agent.settings import load_settings

    settings = load_settings(
        config_file,
        {
            "node_name": node_name,
            "address": address,
            "api_port": api_port,
            "join_port": join_port,
            "state_dir": state_dir,
            "storage_dir": storage_dir,
            "run_dir": run_dir,
            "hypervisor": hypervisor,
            "max_parallel_tasks": max_parallel_tasks,
            "heartbeat_interval": heartbeat_interval,
            "offline_after": offline_after,
            "state": state,
            "etcd_endpoints": etcd_endpoints.split(",") if etcd_endpoints else None,
        },
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Everything the agent creates (database, keys, logs, sockets) is its own: the state
    # directory 0700 and corral.db 0600 from the first byte, not chmod-ed afterwards.
    os.umask(0o077)
    # Imported here: the server stack (FastAPI, uvicorn, drivers) would otherwise load on
    # every CLI call and cost most of its start-up time.
    from corral.agent.node_agent import NodeAgent
    from corral.agent.server import run_agent
    from corral.agent.task_kinds import builtin_kinds

    if settings.hypervisor == "bhyve":
        # bhyve runs on FreeBSD: pointed at a simulated FreeBSD host (the tests), the agent
        # and its helpers read processes and mounts the FreeBSD way, with that host's tools.
        hostos.assume_freebsd(settings.bhyve_root)
    run_agent(NodeAgent(settings, builtin_kinds))
