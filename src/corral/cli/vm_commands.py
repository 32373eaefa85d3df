"""`corral vm ...` and `corral checkpoint ...`: VMs and their checkpoints, through the agent."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from corral.cli.connection import JsonOption, NodeOption, agent_client
from corral.cli.follow import follow_task
from corral.cli.format import ago, mib
from corral.cli.output import console, err_console, print_json, print_table
from corral.cli.tables import vm_table
from corral.errors import ConflictError, UserInputError

vm_app = typer.Typer(
    help="Create, run and inspect VMs.", no_args_is_help=True, add_completion=False
)
checkpoint_app = typer.Typer(
    help="Save a running VM's state and bring it back later.",
    no_args_is_help=True,
    add_completion=False,
)
VmArg = Annotated[str, typer.Argument(help="The VM's name.")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="Queue the task and print it.")]


def _request_from(name: str | None, spec: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if spec is not None:
        try:
            body = tomllib.loads(spec.read_text())
        except FileNotFoundError as exc:
            raise UserInputError("--spec", f"{spec} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UserInputError("--spec", f"{spec} is not valid TOML: {exc}") from exc
    if name is not None:
        if "name" in body and body["name"] != name:
            raise UserInputError("name", f"{name!r} differs from the spec's {body['name']!r}")
        body["name"] = name
    if "name" not in body:
        raise UserInputError("name", "give the VM a name (argument or spec file)")
    cpu = dict(body.get("cpu", {}))
    for key in ("count", "model"):
        if flags.get(f"cpu_{key}") is not None:
            cpu[key] = flags[f"cpu_{key}"]
    topology = {k: flags[k] for k in ("sockets", "cores", "threads") if flags.get(k)}
    if topology:
        cpu["topology"] = {"sockets": 1, "cores": 1, "threads": 1, **topology}
        cpu.setdefault(
            "count",
            cpu["topology"]["sockets"] * cpu["topology"]["cores"] * cpu["topology"]["threads"],
        )
    if cpu:
        body["cpu"] = cpu
    if flags.get("memory") is not None:
        body["memory_mib"] = flags["memory"]
    if flags.get("machine"):
        body["machine"] = flags["machine"]
    disks = [{"size_mib": s} for s in flags.get("disk") or []]
    disks += [{"path": p} for p in flags.get("disk_path") or []]
    if disks:
        body["disks"] = [*body.get("disks", []), *disks]
    if flags.get("nic"):
        body["nics"] = [*body.get("nics", []), *({"bridge": b} for b in flags["nic"])]
    if flags.get("kernel"):
        body["boot"] = {
            "kernel": flags["kernel"],
            "initrd": flags.get("initrd"),
            "cmdline": flags.get("cmdline") or "",
        }
    return body


def _place(body: dict[str, Any], *, quiet: bool) -> str:
    """The member a new VM goes to (`--node auto`): the best that can take it.

    :raise ConflictError: none can, with every member's reasons."""
    with agent_client(None) as client:
        ranking = client.post("/placement", body)
    if not ranking or not ranking[0]["allowed"]:
        reasons = "; ".join(f"[{r['code']}] {r['message']}" for c in ranking for r in c["reasons"])
        raise ConflictError(f"no member can take VM {body.get('name')}: {reasons or 'none'}")
    chosen = str(ranking[0]["node"])
    if not quiet:
        err_console.print(f"placing {body.get('name')} on {chosen}", highlight=False)
    return chosen


@vm_app.command("create")
def create_command(
    name: Annotated[str | None, typer.Argument(help="The VM's name.")] = None,
    spec: Annotated[
        Path | None, typer.Option(help="A TOML spec file (see docs/vm-spec.md).")
    ] = None,
    memory: Annotated[int | None, typer.Option(help="Memory in MiB (256).")] = None,
    cpus: Annotated[int | None, typer.Option(help="vCPUs (1, or sockets*cores*threads).")] = None,
    sockets: Annotated[int | None, typer.Option(help="CPU sockets.")] = None,
    cores: Annotated[int | None, typer.Option(help="Cores per socket.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per core.")] = None,
    cpu_model: Annotated[str | None, typer.Option(help="A named CPU model (qemu64).")] = None,
    machine: Annotated[str | None, typer.Option(help="Machine type (pc-q35-7.2).")] = None,
    disk: Annotated[
        list[int] | None, typer.Option(help="A new qcow2 disk of this many MiB.")
    ] = None,
    disk_path: Annotated[list[str] | None, typer.Option(help="An existing disk image.")] = None,
    nic: Annotated[list[str] | None, typer.Option(help="A virtio NIC on this bridge.")] = None,
    kernel: Annotated[str | None, typer.Option(help="Boot this kernel directly.")] = None,
    initrd: Annotated[str | None, typer.Option(help="Its initrd.")] = None,
    cmdline: Annotated[str | None, typer.Option(help="Its command line.")] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it once created.")] = False,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            envvar="CORRAL_NODE",
            help="Create it on this member (default: the local node); auto: the member with"
            " the most free memory after placing it that has its bridges and machine type.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Define a VM (from --spec, flags, or both; flags add to the spec)."""
    body = _request_from(
        name,
        spec,
        {
            "memory": memory,
            "cpu_count": cpus,
            "sockets": sockets,
            "cores": cores,
            "threads": threads,
            "cpu_model": cpu_model,
            "machine": machine,
            "disk": disk,
            "disk_path": disk_path,
            "nic": nic,
            "kernel": kernel,
            "initrd": initrd,
            "cmdline": cmdline,
        },
    )
    if node == "auto":
        node = _place(body, quiet=json_out)
    with agent_client(node) as client:
        vm = client.post("/vms", body)
        if start:
            follow_task(client, client.post(f"/vms/{vm['name']}/start"), quiet=json_out)
            vm = client.get(f"/vms/{vm['name']}")
    if json_out:
        print_json(vm)
    else:
        console.print(
            f"created VM {vm['name']} on {vm['owner']}" + (f", {vm['observed']}" if start else "")
        )


@vm_app.command("list")
def list_command(
    node: Annotated[
        str | None,
        typer.Option("--node", help="Only this node's VMs (by default: the whole cluster's)."),
    ] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every column.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Every VM of the cluster and the node it runs on (each member asked at once; the VMs
    of a member that does not answer are shown as unknown, not hidden)."""
    silent: list[dict[str, Any]] = []
    with agent_client(node) as client:
        if node is None:
            view = client.get("/cluster/vms")
            vms, silent = view["vms"], [n for n in view["nodes"] if not n["answered"]]
        else:
            vms = [dict(vm, node=vm["owner"]) for vm in client.get("/vms")]
    for n in silent:
        known = (
            f"it had {n['vm_count']} VM(s) at its last heartbeat"
            if "vm_count" in n
            else "its VMs are shown as last seen, state unknown"
        )
        err_console.print(f"[yellow]{n['name']} did not answer ({n['error']}): {known}[/]")
    if json_out:
        print_json(vms)
        return
    print_table(vm_table(vms, wide=wide), wide=wide)


@vm_app.command("show")
def show_command(vm: VmArg, node: NodeOption = None, json_out: JsonOption = False) -> None:
    """One VM, wherever it runs in the cluster: its spec, state and history (--node: only
    if that node owns it)."""
    with agent_client(node) as client:
        info = client.get(f"/vms/{vm}", here=str(node is not None).lower())
    if json_out:
        print_json(info)
        return
    for key in ("name", "owner", "state", "observed", "pid", "console_log"):
        console.print(f"{key:12} {info[key]}", highlight=False, markup=False)
    if info.get("held"):
        console.print(f"{'held':12} {info['held']}", highlight=False, markup=False)
    spec = info["spec"]
    console.print(f"{'memory':12} {mib(spec['memory_mib'])}")
    console.print(f"{'cpu':12} {spec['cpu']}", highlight=False, markup=False)
    for disk in spec["disks"]:
        console.print(
            f"{'disk':12} {disk['path']} ({disk['format']})", highlight=False, markup=False
        )
    for nic in spec["nics"]:
        console.print(
            f"{'nic':12} {nic['mac']} on {nic['bridge']} (tap {nic['tap']})", highlight=False
        )
    console.print("history:")
    for event in info["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        console.print(
            f"  {stamp} {event['from'] or '-'} -> {event['to']}  {event['reason']}", highlight=False
        )


def _task_command(
    vm: str,
    path: str,
    body: dict[str, Any] | None,
    node: str | None,
    no_wait: bool,
    json_out: bool,
    done: str,
) -> None:
    with agent_client(node) as client:
        task = client.post(f"/vms/{vm}/{path}", body)
        if not no_wait:
            task = follow_task(client, task, quiet=json_out)
    if json_out:
        print_json(task)
    elif no_wait:
        console.print(f"queued task {task['id']}")
    else:
        console.print(done)


@vm_app.command("start")
def start_command(
    vm: VmArg, node: NodeOption = None, no_wait: NoWait = False, json_out: JsonOption = False
) -> None:
    """Start a VM."""
    _task_command(vm, "start", None, node, no_wait, json_out, f"{vm} started")


@vm_app.command("stop")
def stop_command(
    vm: VmArg,
    timeout: Annotated[float, typer.Option(help="Seconds before forcing it off.")] = 30,
    node: NodeOption = None,
    no_wait: NoWait = False,
    json_out: JsonOption = False,
) -> None:
    """Power a VM off (ACPI), forced after --timeout."""
    _task_command(vm, "stop", {"timeout": timeout}, node, no_wait, json_out, f"{vm} stopped")


def _simple(vm: str, action: str, node: str | None, json_out: bool) -> None:
    with agent_client(node) as client:
        info = client.post(f"/vms/{vm}/{action}")
    if json_out:
        print_json(info)
    else:
        console.print(f"{vm} {info['observed']}")


@vm_app.command("kill")
def kill_command(vm: VmArg, node: NodeOption = None, json_out: JsonOption = False) -> None:
    """Stop a VM at once (no shutdown)."""
    _simple(vm, "kill", node, json_out)


@vm_app.command("pause")
def pause_command(vm: VmArg, node: NodeOption = None, json_out: JsonOption = False) -> None:
    """Freeze a VM's vCPUs."""
    _simple(vm, "pause", node, json_out)


@vm_app.command("resume")
def resume_command(vm: VmArg, node: NodeOption = None, json_out: JsonOption = False) -> None:
    """Let a paused VM run again."""
    _simple(vm, "resume", node, json_out)


@vm_app.command("console")
def console_command(
    vm: VmArg,
    lines: Annotated[int, typer.Option(help="How many of the last lines.")] = 50,
    node: NodeOption = None,
) -> None:
    """Print the end of a VM's serial console log."""
    with agent_client(node) as client:
        text = client.request("GET", f"/vms/{vm}/console", params={"lines": lines})
    typer.echo(text, nl=False)


@vm_app.command("delete")
def delete_command(
    vm: VmArg,
    keep_disks: Annotated[bool, typer.Option(help="Keep the disk images.")] = False,
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a stopped VM: its record, spec, runtime files and disks corral made."""
    with agent_client(node) as client:
        answer = client.delete(f"/vms/{vm}", keep_disks=str(keep_disks).lower())
    if json_out:
        print_json(answer)
    else:
        console.print(f"deleted {vm}")


@checkpoint_app.command("create")
def checkpoint_create(
    vm: VmArg,
    name: Annotated[str | None, typer.Option(help="Its name (ckpt-DATE-TIME).")] = None,
    suspend: Annotated[bool, typer.Option(help="Stop the VM once saved.")] = False,
    node: NodeOption = None,
    no_wait: NoWait = False,
    json_out: JsonOption = False,
) -> None:
    """Save a running VM's memory, devices and disks; it runs on (or stops with --suspend)."""
    name = name or time.strftime("ckpt-%Y%m%d-%H%M%S")
    _task_command(
        vm,
        "checkpoints",
        {"name": name, "suspend": suspend},
        node,
        no_wait,
        json_out,
        f"checkpoint {name} of {vm} saved",
    )


@checkpoint_app.command("list")
def checkpoint_list(vm: VmArg, node: NodeOption = None, json_out: JsonOption = False) -> None:
    """A VM's checkpoints."""
    with agent_client(node) as client:
        items = client.get(f"/vms/{vm}/checkpoints")
    if json_out:
        print_json(items)
        return
    table = Table()
    for column in ("name", "created", "size", "QEMU", "suspended", "spec"):
        table.add_column(column)
    for c in items:
        table.add_row(
            c["name"],
            ago(c["created_at"]),
            mib(c["size_bytes"] / 1048576),
            c["hypervisor_version"],
            "yes" if c["suspended"] else "no",
            c["spec_digest"],
        )
    console.print(table)


@checkpoint_app.command("restore")
def checkpoint_restore(
    vm: VmArg,
    name: Annotated[str, typer.Argument(help="The checkpoint.")],
    node: NodeOption = None,
    no_wait: NoWait = False,
    json_out: JsonOption = False,
) -> None:
    """Bring a VM back exactly as the checkpoint saved it (same memory, disks, MACs)."""
    _task_command(
        vm,
        f"checkpoints/{name}/restore",
        None,
        node,
        no_wait,
        json_out,
        f"{vm} restored from {name}",
    )


@checkpoint_app.command("delete")
def checkpoint_delete(
    vm: VmArg,
    name: Annotated[str, typer.Argument(help="The checkpoint.")],
    node: NodeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a checkpoint and its disk snapshots."""
    with agent_client(node) as client:
        answer = client.delete(f"/vms/{vm}/checkpoints/{name}")
    if json_out:
        print_json(answer)
    else:
        console.print(f"deleted checkpoint {name} of {vm}")
