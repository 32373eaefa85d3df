"""The tables of `corral vm list` and `corral node list`: at 80 columns the columns a person
needs first, every one of them readable; `--wide` adds the rest (rich wraps or drops
nothing that is asked for, so a narrow table simply has fewer columns)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from corral.cli.format import ago, mib


def vm_state(vm: dict[str, Any]) -> str:
    observed = vm.get("observed")
    if observed == "unknown":
        return "[yellow]unknown[/]"
    state = observed or vm["state"]
    if observed and observed != vm["state"]:
        state = f"{observed} (recorded {vm['state']})"
    if vm.get("held"):
        state += f", {vm['held']}"
    return str(state)


def _topology(spec: dict[str, Any]) -> str:
    cpu = spec["cpu"]
    topo = cpu.get("topology") or {"sockets": 1, "cores": cpu["count"], "threads": 1}
    return f"{topo['sockets']}x{topo['cores']}x{topo['threads']}"


def vm_table(vms: list[dict[str, Any]], *, wide: bool = False) -> Table:
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("node", no_wrap=True)
    table.add_column("state")
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("vCPUs", justify="right", no_wrap=True)
    if wide:
        for column in ("pid", "topology (s x c x t)", "CPU model", "disks", "NICs", "changed"):
            table.add_column(column, no_wrap=column != "NICs")
    for vm in vms:
        spec = vm["spec"]
        row = [
            vm["name"],
            str(vm.get("node") or vm["owner"]),
            vm_state(vm),
            mib(spec["memory_mib"]),
            str(spec["cpu"]["count"]),
        ]
        if wide:
            row += [
                str(vm.get("pid") or ""),
                _topology(spec),
                str(spec["cpu"]["model"]),
                str(len(spec["disks"])),
                ", ".join(n["bridge"] for n in spec["nics"]),
                ago(vm["updated_at"]),
            ]
        table.add_row(*row)
    return table


def node_state(n: dict[str, Any]) -> str:
    """online or offline; a node in maintenance is draining while it still owns VMs, then
    drained."""
    state = "[green]online[/]" if n["online"] else "[red]offline[/]"
    if n.get("draining"):
        drained = n.get("facts", {}).get("vm_count") == 0
        state += " [yellow]drained[/]" if drained else " [yellow]draining[/]"
    return state


def node_table(nodes: list[dict[str, Any]], *, wide: bool = False) -> Table:
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("seen", no_wrap=True)
    table.add_column("memory free/total", no_wrap=True)
    table.add_column("VMs", justify="right", no_wrap=True)
    if wide:
        for column in ("address", "arch", "CPU", "hypervisor", "VM storage"):
            table.add_column(column, no_wrap=column != "VM storage")
    for n in nodes:
        f = n["facts"]
        row = [
            n["name"] + (" *" if n.get("self") else ""),
            node_state(n),
            ago(n["last_seen"]),
            f"{mib(f.get('memory_free_mib'))} / {mib(f.get('memory_total_mib'))}",
            str(f.get("vm_count", "?")),
        ]
        if wide:
            row += [
                f"{n['address']}:{n['port']}",
                str(f.get("arch", "?")),
                f"{f.get('cpu_vendor', '?')} {f.get('cpu_model', '')}".strip(),
                f"{f.get('hypervisor', '?')} {f.get('hypervisor_version', '')}"
                f" {f.get('accelerator', '?')}",
                storage_text(f.get("storage", {})),
            ]
        table.add_row(*row)
    return table


def storage_text(storage: dict[str, Any]) -> str:
    """ "GlusterFS" when the data, config and system dirs share one filesystem kind, else
    each role's kind."""
    kinds = {role: str(info.get("filesystem", "?")) for role, info in storage.items()}
    if len(set(kinds.values())) == 1:
        return next(iter(kinds.values()))
    return ", ".join(f"{role}: {kind}" for role, kind in kinds.items())
