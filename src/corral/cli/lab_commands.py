"""`corral lab ...`: the one-machine lab cluster and its test guest."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from corral import config
from corral.cli.output import console, print_json
from corral.errors import NotFoundError, UserInputError
from corral.lab import etcd
from corral.lab.agents import agent_pid, agent_socket, form_cluster
from corral.lab.image import GuestImageBuilder
from corral.lab.lifecycle import lab_down, lab_status, lab_up, load_plan, require_root
from corral.lab.plan import LabConfig, LabPlan

lab_app = typer.Typer(
    help="A whole cluster on this machine, in network namespaces, for demos and tests.",
    no_args_is_help=True,
    add_completion=False,
)

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Lab state and storage directory (env CORRAL_LAB_ROOT, default /var/lib/corral-lab).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]


def _network(value: str, option: str) -> IPv4Network:
    try:
        return IPv4Network(value)
    except ValueError as exc:
        raise UserInputError(option, f"{value!r} is not an IPv4 network ({exc})") from exc


@lab_app.command("image")
def image_command(
    rebuild: Annotated[bool, typer.Option(help="Build again even if cached.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Build (once) and cache the test guest: a Debian kernel and a busybox initramfs."""
    builder = GuestImageBuilder(config.cache_dir())
    with console.status("building the test guest image"):
        image = builder.build(force=rebuild)
    if json_out:
        print_json(
            {
                "kernel": str(image.kernel),
                "initrd": str(image.initrd),
                "kernel_package": image.kernel_package,
                "key": image.key,
            }
        )
    else:
        console.print(f"kernel  {image.kernel}  ({image.kernel_package})")
        console.print(f"initrd  {image.initrd}")


@lab_app.command("up")
def up_command(
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Number of nodes.")] = 2,
    prefix: Annotated[str, typer.Option(help="Prefix of the namespaces' names.")] = "corral",
    migration_net: Annotated[
        str, typer.Option(help="Migration network (node I gets host I).")
    ] = "10.210.0.0/24",
    guest_net: Annotated[
        str, typer.Option(help="Guest network (the client gets host 254).")
    ] = "10.211.0.0/24",
    root: RootOption = None,
    storage: Annotated[
        str,
        typer.Option(
            help="dir: a directory shared by path; glusterfs: a GlusterFS volume mounted on"
            " it; local: each node its own VM directories (nothing shared)."
        ),
    ] = "dir",
    state: Annotated[
        str,
        typer.Option(
            help="gossip: the agents agree among themselves; etcd: a 3-member etcd cluster in"
            " the lab's namespaces (TLS from the cluster CA) holds membership and VM ownership."
        ),
    ] = "gossip",
    with_agents: Annotated[
        bool,
        typer.Option("--agents/--no-agents", help="Start an agent per node and form the cluster."),
    ] = True,
) -> None:
    """Build the lab: a namespace per node, a migration network, a guest network with a
    client namespace, shared and per-node storage directories, and an agent per node with
    node1 the cluster's first member and the others joined by token. Safe to run twice."""
    cfg = LabConfig(
        nodes=nodes,
        prefix=prefix,
        root=root or config.lab_root(),
        migration_net=_network(migration_net, "--migration-net"),
        guest_net=_network(guest_net, "--guest-net"),
        storage=storage,
        state=state,
    )
    plan = lab_up(cfg, progress=console.print)
    if with_agents:
        with console.status("starting agents and forming the cluster"):
            form_cluster(plan)
        console.print(f"cluster formed: {', '.join(n.name for n in plan.nodes)} online")


@lab_app.command("down")
def down_command(root: RootOption = None) -> None:
    """Remove exactly what 'lab up' made: namespaces, links, directories, processes."""
    if not lab_down(root or config.lab_root(), progress=console.print):
        console.print("no lab is up")


def etcd_members(plan: LabPlan) -> list[tuple[etcd.EtcdMember, bool]]:
    """The lab's etcd members (`--state etcd`) and whether each runs."""
    return [(m, etcd.running(m)) for m in etcd.lab_members(plan)]


@lab_app.command("status")
def status_command(root: RootOption = None, json_out: JsonOption = False) -> None:
    """Show the lab's nodes, networks and whether each part exists."""
    require_root()
    plan = load_plan(root or config.lab_root())
    if plan is None:
        raise NotFoundError("no lab is up (run 'corral lab up')")
    status = lab_status(plan)
    if json_out:
        print_json(
            {
                "healthy": status.healthy,
                "config": plan.config.to_json(),
                "client": {"netns": plan.client_netns, "address": str(plan.client_address)},
                "nodes": [
                    {
                        "name": n.name,
                        "netns": n.netns,
                        "bridge": n.bridge,
                        "migration_address": str(n.migration_address),
                        "local_dir": str(n.local_dir),
                        "agent_pid": agent_pid(n),
                        "agent_socket": str(agent_socket(n)),
                        "up": status.namespaces[n.netns],
                        "processes": len(status.processes.get(n.netns, [])),
                    }
                    for n in plan.nodes
                ],
                "shared_dir": str(plan.shared_dir),
                "etcd": [
                    {"name": m.name, "netns": m.netns, "url": m.client_url, "running": running}
                    for m, running in etcd_members(plan)
                ],
                "links": [
                    {"netns": ln.netns, "name": ln.name, "present": ln.present, "up": ln.up}
                    for ln in status.links
                ],
            }
        )
        return
    table = Table(title=f"lab under {plan.config.root}")
    for column in ("node", "namespace", "migration address", "agent", "processes", "state"):
        table.add_column(column)
    for n in plan.nodes:
        ok = status.namespaces[n.netns]
        pid = agent_pid(n)
        table.add_row(
            n.name,
            n.netns,
            str(n.migration_address),
            f"pid {pid}" if pid else "[yellow]not running[/]",
            str(len(status.processes.get(n.netns, []))),
            "[green]up[/]" if ok else "[red]missing[/]",
        )
    console.print(table)
    console.print(f"client   {plan.client_netns} {plan.client_address}")
    console.print(f"shared   {plan.shared_dir}")
    for member, running in etcd_members(plan):
        state = "[green]running[/]" if running else "[red]not running[/]"
        console.print(f"etcd     {member.name} {member.client_url} {state}")
    broken = [f"{ln.netns}/{ln.name}" for ln in status.links if not (ln.present and ln.up)]
    if broken:
        console.print(f"[red]links missing or down:[/] {', '.join(broken)}")
    console.print("[green]healthy[/]" if status.healthy else "[red]unhealthy[/]")
    if not status.healthy:
        raise typer.Exit(1)


@lab_app.command("demo")
def demo_command() -> None:
    """Build a three-node lab, boot the test guest in node1, ping it and read its counter
    over TCP from the client, live-migrate it to node2 and back, drain node1 (the VM goes
    where corral places it), and take everything down again."""
    from corral.cli.lab_demo import run_demo

    require_root()
    run_demo()
