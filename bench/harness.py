"""What every benchmark shares: the machine and versions it ran on, medians and spread,
interleaved runs of the sides being compared, a lab cluster with agents, and the result
files (bench/results/NAME.json and NAME.md) that record the command that made them."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import config
from corral.client import AgentClient
from corral.lab import agents
from corral.lab.image import GuestImage, GuestImageBuilder, guest_cmdline
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig, LabNode, LabPlan
from corral.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFIX = "cbench"


def machine() -> dict[str, Any]:
    """Where the numbers come from: they mean little elsewhere."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": qemu[0] if qemu else "unknown",
        "accelerator": "tcg (no KVM here)",
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and p99 (nearest rank) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    rank = max(0, min(len(ordered) - 1, round(0.99 * len(ordered) + 0.5) - 1))
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "p99": round(ordered[rank], 4),
    }


def fmt(s: dict[str, float], unit: str = "", digits: int = 2) -> str:
    """`median (min-max)` for a table cell."""
    if not s.get("n"):
        return "-"
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def cell(values: Sequence[float | None], digits: int = 2, unit: str = "") -> str:
    """A table cell: `median (min-max), n=K` of what was measured; a value that could not
    be measured (None) is counted as missing, never as 0; "missing" when none was."""
    found = [v for v in values if v is not None]
    if not found:
        return "missing"
    text = f"{fmt(spread(found), unit, digits)}, n={len(found)}"
    lost = len(values) - len(found)
    return text + (f", {lost} missing" if lost else "")


def measured(values: Sequence[float | None], what: str) -> list[float]:
    """The values of `what` that were measured; a side with none fails loudly.

    :raise RuntimeError: nothing of `what` was measured."""
    found = [v for v in values if v is not None]
    if not found:
        raise RuntimeError(f"{what}: no sample could be measured; refusing to report it")
    return found


def interleaved(
    sides: dict[str, Callable[[int], dict[str, Any]]], runs: int
) -> dict[str, list[dict[str, Any]]]:
    """Run each side `runs` times, alternating which goes first, so a drift of the machine
    (noisy neighbours, caches) falls on both sides alike."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    names = list(sides)
    for run in range(runs):
        for name in names if run % 2 == 0 else reversed(names):
            out[name].append(sides[name](run))
    return out


@dataclass
class Result:
    name: str
    title: str
    description: str
    columns: list[tuple[str, str]]  # (key in a row, header)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def write(self, command: str) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started))
        m = machine()
        data: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "date": stamp,
            "seconds": round(time.time() - self.started, 1),
            "command": command,
            "machine": m,
            "description": self.description,
            "rows": self.rows,
            "notes": self.notes,
            "raw": self.raw,
        }
        (RESULTS / f"{self.name}.json").write_text(json.dumps(data, indent=2) + "\n")
        lines = [
            f"# {self.title}",
            "",
            f"{stamp}, `{command}`, {data['seconds']} s. {m['cores']} cores,"
            f" {m['memory_gib']} GiB, {m['qemu']}, {m['accelerator']}, Linux {m['kernel']}.",
            "",
            self.description,
            "",
            "| " + " | ".join(h for _, h in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(str(row.get(k, "-")) for k, _ in self.columns) + " |")
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        md = RESULTS / f"{self.name}.md"
        md.write_text("\n".join(lines) + "\n")
        print(md.read_text(), flush=True)
        return md


def command_line() -> str:
    """The command that made a result: `make ...` when make set BENCH_COMMAND, otherwise
    `python -m bench.NAME ARGS`."""
    if os.environ.get("BENCH_COMMAND"):
        return os.environ["BENCH_COMMAND"]
    script = Path(sys.argv[0])
    module = f"bench.{script.stem}" if script.parent == ROOT / "bench" else str(script)
    return " ".join(["python", "-m", module, *sys.argv[1:]])


# -- the lab -------------------------------------------------------------------------------


def image() -> GuestImage:
    return GuestImageBuilder(config.cache_dir()).build()


@contextmanager
def bench_lab(nodes: int = 2, storage: str = "dir", state: str = "gossip") -> Iterator[LabPlan]:
    """A lab cluster with agents (prefix cbench), always removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="corral-bench-")) / "lab"
    config = LabConfig(nodes=nodes, prefix=PREFIX, root=root, storage=storage, state=state)
    plan = lab_up(config)
    try:
        agents.form_cluster(plan)
        yield plan
    finally:
        lab_down(root)


def corral(node: LabNode, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The CLI as a person on `node` runs it."""
    return agents.run_cli(node, *args, timeout=timeout)


def corral_ok(node: LabNode, *args: str) -> str:
    out = corral(node, *args)
    if out.returncode != 0:
        raise RuntimeError(f"corral {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def migrate_lines(
    node: LabNode, vm: str, target: str, *args: str
) -> tuple[int, float, list[dict[str, Any]], str]:
    """`corral migrate --json`: exit code, wall time, its JSON lines (progress, then the
    summary on success), stderr."""
    t0 = time.monotonic()
    out = corral(node, "migrate", vm, target, "--json", *args)
    wall = time.monotonic() - t0
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    return out.returncode, wall, lines, out.stderr.strip()


def migrate(node: LabNode, vm: str, target: str, *args: str) -> tuple[float, dict[str, Any]]:
    """`corral migrate --json`, which must succeed: the wall time and the summary."""
    code, wall, lines, err = migrate_lines(node, vm, target, *args)
    if code != 0:
        raise RuntimeError(f"corral migrate {vm} {target}: {err}")
    return wall, lines[-1]


def migrate_api(node: LabNode, vm: str, target: str, *, tls: bool) -> tuple[float, dict[str, Any]]:
    """The migration as a program already running asks for it (a web page, a script, an
    orchestrator): `POST /v1/migrations` on the node's socket, then its task followed as the
    agent streams it. No process start, no CLI: the control plane's own time. It must
    succeed: the wall time and the summary."""
    with AgentClient(socket_path=agents.agent_socket(node)) as client:
        t0 = time.monotonic()
        started = client.post("/migrations", {"vm": vm, "target": target, "insecure": not tls})
        task = client.follow_task(
            started["task"]["id"],
            lambda t: t if t["state"] in ("succeeded", "failed", "cancelled") else None,
            timeout=900,
        )
        wall = time.monotonic() - t0
    if task["state"] != "succeeded":
        raise RuntimeError(f"migration of {vm} to {target} {task['state']}: {task['error']}")
    return wall, task["result"]


def journal_phases(node: LabNode, migration_id: str) -> dict[str, float]:
    """Seconds from each journal step to the next (the source's record of the migration)."""
    entries = json.loads(corral_ok(node, "migrations", "show", migration_id, "--json"))["journal"]
    out: dict[str, float] = {}
    for a, b in itertools.pairwise(entries):
        out[a["phase"]] = out.get(a["phase"], 0.0) + b["at"] - a["at"]
    out["journal_total"] = entries[-1]["at"] - entries[0]["at"]
    return out


def create_vm(
    plan: LabPlan,
    img: GuestImage,
    name: str,
    *,
    host: int,
    memory_mib: int = 256,
    dirty_mib: int = 0,
    node: int = 0,
) -> str:
    """A test guest through corral on `node`, booted; returns its guest address."""
    ip = str(plan.guest_address(host).ip)
    corral_ok(
        plan.nodes[node],
        "vm",
        "create",
        name,
        "--memory",
        str(memory_mib),
        "--nic",
        "br0",
        "--kernel",
        str(img.kernel),
        "--initrd",
        str(img.initrd),
        "--cmdline",
        guest_cmdline(ip=f"{ip}/24", dirty_mib=dirty_mib),
        "--start",
    )
    wait_booted(plan.nodes[node], name)
    return ip


def wait_booted(node: LabNode, vm: str) -> None:
    wait_for(
        lambda: "COUNTER" in corral_ok(node, "vm", "console", vm, "--lines", "5"),
        timeout=180,
        what=f"{vm} to boot",
        interval=0.5,
    )


def owner(plan: LabPlan, vm: str) -> int:
    """The index of the node that runs `vm`."""
    for i, node in enumerate(plan.nodes):
        if corral(node, "vm", "show", vm, "--node", node.name).returncode == 0:
            return i
    raise RuntimeError(f"{vm} runs nowhere")
