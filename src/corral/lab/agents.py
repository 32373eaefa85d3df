"""The lab's agents: one `corral agent` per node namespace, node1 the cluster's first member
and the others joined to it with tokens, exactly as a person would do it on real hosts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from corral import config
from corral.api_errors import Unreachable
from corral.client import AgentClient
from corral.commands import pid_alive
from corral.errors import CorralError, EnvironmentProblem
from corral.lab import etcd, netns
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for

HEARTBEAT_INTERVAL = 1.0
OFFLINE_AFTER = 5.0


def agent_socket(node: LabNode) -> Path:
    return node.local_dir / "run" / "agent.sock"


def _pid_file(node: LabNode) -> Path:
    return node.local_dir / "agent.pid"


def scratch_dir(node: LabNode) -> Path:
    """A directory of the node's own for disk images, whatever the lab's storage."""
    path = node.local_dir / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def agent_config(plan: LabPlan, node: LabNode, extra: dict[str, object] | None = None) -> Path:
    """Write (and return) the node's agent settings file; `extra` adds or replaces settings
    (strings, numbers and lists of strings)."""
    path = node.local_dir / "agent.toml"
    storage = plan.storage_dir(node)
    settings: dict[str, object] = {
        "node_name": node.name,
        "address": str(node.migration_address.ip),
        "state_dir": str(node.local_dir / "state"),
        "run_dir": str(node.local_dir / "run"),
        "storage_dir": str(storage),
        # VMs may use the node's data directory, a scratch directory of the node's own
        # (`images`: local disks beside shared storage) and the cached test guest.
        "image_dirs": [
            str(storage / "data"),
            str(scratch_dir(node)),
            str(config.cache_dir() / "guest"),
        ],
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "offline_after": OFFLINE_AFTER,
        "accelerator": "tcg",
        **(
            {
                "state": "etcd",
                "etcd_endpoints": plan.etcd_endpoints,
                "crl_file": str(plan.etcd_crl),
            }
            if plan.config.state == "etcd"
            else {}
        ),
        **(extra or {}),
    }
    # JSON's strings, numbers and arrays of strings are also TOML's.
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def agent_pid(node: LabNode) -> int | None:
    """The PID of the node's agent if it runs."""
    try:
        pid = int(_pid_file(node).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def client(node: LabNode, timeout: float = 30.0) -> AgentClient:
    return AgentClient(socket_path=agent_socket(node), timeout=timeout)


def _healthy(node: LabNode) -> bool:
    try:
        with client(node, timeout=2) as c:
            c.get("/health")
        return True
    except Unreachable:
        return False


def start_agent(
    plan: LabPlan,
    node: LabNode,
    timeout: float = 30.0,
    extra: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start the node's agent in its namespace (unless it runs) and wait until it answers;
    `extra` settings are added to its configuration, `env` to its environment (e.g. the
    simulated FreeBSD profile's PATH)."""
    running = agent_pid(node)
    if running is not None and _healthy(node):
        return running
    config = agent_config(plan, node, extra)
    argv = [sys.executable, "-m", "corral", "agent", "--config", str(config)]
    if env:
        argv = ["/usr/bin/env", *(f"{k}={v}" for k, v in env.items()), *argv]
    log = (node.local_dir / "agent.log").open("ab")
    proc = subprocess.Popen(
        netns.in_netns(node.netns, argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    _pid_file(node).write_text(f"{proc.pid}\n")

    def answering() -> bool:
        if proc.poll() is not None:
            tail = (node.local_dir / "agent.log").read_text(errors="replace")[-800:]
            raise EnvironmentProblem(f"the agent of {node.name} exited: {tail}")
        return _healthy(node)

    wait_for(answering, timeout=timeout, what=f"the agent of {node.name}", interval=0.1)
    return proc.pid


def stop_agent(node: LabNode, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop the node's agent (SIGTERM, then SIGKILL after `timeout`)."""
    pid = agent_pid(node)
    if pid is None:
        return
    os.kill(pid, sig)
    try:
        wait_for(lambda: not pid_alive(pid), timeout=timeout, what=f"agent {pid} to exit")
    except CorralError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), timeout=5, what=f"agent {pid} to die")
    _pid_file(node).unlink(missing_ok=True)


def form_cluster(plan: LabPlan, timeout: float = 60.0) -> None:
    """Start every agent, make node1 the first member and join the others with tokens;
    return once every node sees every other online. Safe on a cluster already formed."""
    for node in plan.nodes:
        start_agent(plan, node)
    first = plan.nodes[0]
    with client(first) as c1:
        if not c1.get("/cluster")["member"]:
            c1.post("/cluster/init", {"name": plan.config.prefix})
        for node in plan.nodes[1:]:
            with client(node) as c:
                if c.get("/cluster")["member"]:
                    continue
                token = c1.post("/cluster/tokens", {"ttl_seconds": 300})["token"]
                c.post(
                    "/cluster/join",
                    {"address": str(first.migration_address.ip), "token": token},
                    timeout=60,
                )
    if plan.config.state == "etcd":
        etcd.start_lab(plan)  # its certificates come from the CA node1 just made
    names = {n.name for n in plan.nodes}

    def all_online() -> bool:
        for node in plan.nodes:
            with client(node) as c:
                online = {n["name"] for n in c.get("/nodes") if n["online"]}
            if online != names:
                return False
        return True

    wait_for(all_online, timeout=timeout, what="every node to see every other online", interval=0.2)


def stop_agents(plan: LabPlan) -> None:
    for node in plan.nodes:
        stop_agent(node)


def run_cli(node: LabNode, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a person on `node` runs it: `corral ARGS` against that node's agent."""
    env = dict(os.environ, CORRAL_SOCKET=str(agent_socket(node)))
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
