"""The tables of `vm list` and `node list` at 80 columns: every column shown is readable in
full (none rendered empty or cut), and --wide has every column."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from corral.cli.tables import node_table, vm_table


def render(table: Any, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def node(name: str, online: bool = True, draining: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "address": "10.210.0.1",
        "port": 4710,
        "online": online,
        "draining": draining,
        "last_seen": time.time() - 3,
        "self": name == "node1",
        "facts": {
            "arch": "x86_64",
            "cpu_vendor": "GenuineIntel",
            "cpu_model": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
            "hypervisor": "qemu",
            "hypervisor_version": "7.2.22",
            "accelerator": "tcg",
            "memory_free_mib": 20480,
            "memory_total_mib": 24064,
            "vm_count": 12,
            "storage": {r: {"filesystem": "GlusterFS"} for r in ("data", "config", "system")},
        },
    }


def vm(name: str, node_name: str, observed: str = "running") -> dict[str, Any]:
    return {
        "name": name,
        "owner": node_name,
        "node": node_name,
        "state": "running",
        "observed": observed,
        "pid": 4242,
        "held": None,
        "updated_at": time.time() - 60,
        "spec": {
            "memory_mib": 4096,
            "cpu": {"count": 4, "model": "Westmere", "topology": None},
            "disks": [{}],
            "nics": [{"bridge": "br0"}],
        },
    }


def test_node_list_fits_80_columns_with_every_cell_whole() -> None:
    nodes = [node("node1"), node("node2", draining=True), node("node3", online=False)]
    text = render(node_table(nodes))
    assert max(len(line) for line in text.splitlines()) <= 80
    for expected in ("node1 *", "node2", "node3", "online", "draining", "offline"):
        assert expected in text
    empty = node("node4", draining=True)
    empty["facts"]["vm_count"] = 0
    assert "online drained" in render(node_table([empty]))
    assert text.count("20.0 GiB / 23.5 GiB") == 3
    assert "GenuineIntel" not in text  # wide only


def test_node_list_wide_has_every_column_in_full() -> None:
    text = render(node_table([node("node1")], wide=True), width=240)
    for expected in ("10.210.0.1:4710", "x86_64", "Platinum 8375C", "qemu 7.2.22 tcg", "GlusterFS"):
        assert expected in text


def test_vm_list_fits_80_columns_and_says_unknown() -> None:
    vms = [vm("web-frontend-01", "node1"), vm("db", "node3", observed="unknown")]
    text = render(vm_table(vms))
    assert max(len(line) for line in text.splitlines()) <= 80
    for expected in ("web-frontend-01", "node1", "running", "4.0 GiB", "unknown", "node3"):
        assert expected in text
    wide = render(vm_table(vms, wide=True), width=240)
    for expected in ("4242", "1x4x1", "Westmere", "br0"):
        assert expected in wide


def test_the_drain_table_says_what_became_of_each_vm_and_why_one_stayed() -> None:
    from corral.cli.drain_commands import drain_table

    progress = {
        "vms": {
            "web1": {"state": "moved", "target": "node2", "reasons": []},
            "off": {"state": "rehomed", "target": "node3", "reasons": []},
            "db": {
                "state": "stayed",
                "target": None,
                "reasons": [
                    {"code": "local-disks", "message": "disk 0 is local", "node": "node1"},
                    {
                        "code": "target-draining",
                        "message": "node3 is being drained",
                        "node": "node3",
                    },
                ],
            },
        }
    }
    text = render(drain_table(progress))
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ ")}
    assert "moved" in rows["web1"]
    assert "node2" in rows["web1"]
    assert "rehomed" in rows["off"]
    assert "stayed" in rows["db"]
    assert "[local-disks]" in rows["db"]  # the code in brackets, not taken as markup
    assert "node3 is being drained" in text  # wrapped, never cut at 80 columns
