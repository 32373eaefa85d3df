"""What the dashboard's pages show, shaped from the agent API's answers: node rows with a
memory bar, VM rows, a migration's live numbers, and the chart of its remaining bytes (an
SVG drawn here, on the server).

Pure: no HTTP, no agent.

Must never import: agent, lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024
CHART_W, CHART_H = 480, 120
CHART_POINTS = 600  # the newest samples a chart keeps


def size(n: Any) -> str:
    """1.5 GiB, 12.0 MiB, 512 B; "-" for a number not known."""
    if not isinstance(n, int | float):
        return "-"
    if n >= 1024 * MIB:
        return f"{n / 1024 / MIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n:.0f} B"


def node_row(node: dict[str, Any]) -> dict[str, Any]:
    f = node.get("facts", {})
    total, free = f.get("memory_total_mib"), f.get("memory_free_mib")
    used_pct, memory = None, "-"
    if isinstance(total, int) and isinstance(free, int) and total > 0:
        used_pct = round(100 * (total - free) / total)
        memory = f"{size((total - free) * MIB)} used of {size(total * MIB)}"
    state = "online" if node.get("online") else "offline"
    maintenance = None
    if node.get("draining"):
        maintenance = "drained" if f.get("vm_count") == 0 else "draining"
    return {
        "name": node["name"],
        "state": state,
        "maintenance": maintenance,
        "cpu": f"{f.get('cpu_vendor', '?')} {f.get('cpu_model', '')}".strip(),
        "hypervisor": f"{f.get('hypervisor', '?')} {f.get('hypervisor_version', '')}".strip(),
        "memory": memory,
        "used_pct": used_pct,
        "vms": f.get("vm_count", "?"),
    }


def vm_row(vm: dict[str, Any]) -> dict[str, Any]:
    spec = vm.get("spec", {})
    cpu = spec.get("cpu", {})
    topo = cpu.get("topology") or {"sockets": 1, "cores": cpu.get("count", 1), "threads": 1}
    return {
        "name": vm["name"],
        "node": vm.get("node") or vm.get("owner"),
        "state": vm.get("observed") or vm.get("state"),
        "held": vm.get("held"),
        "topology": f"{topo['sockets']}x{topo['cores']}x{topo['threads']}",
        "vcpus": cpu.get("count", "?"),
        "memory": size(spec.get("memory_mib", 0) * MIB) if spec.get("memory_mib") else "-",
    }


@dataclass
class Chart:
    """Remaining bytes of a migration over time, as the updates arrive."""

    points: list[tuple[float, float]] = field(default_factory=list)  # (seconds, bytes)

    def add(self, at: float, remaining: Any) -> None:
        if isinstance(remaining, int | float):
            self.points.append((at, float(remaining)))
            del self.points[:-CHART_POINTS]

    def svg(self) -> str:
        """A polyline of the points scaled into the chart, with its axes' extremes."""
        if len(self.points) < 2:
            return ""
        t0, t1 = self.points[0][0], self.points[-1][0]
        top = max(b for _, b in self.points) or 1.0
        span = max(t1 - t0, 1e-6)
        xy = " ".join(
            f"{(t - t0) / span * CHART_W:.1f},{CHART_H - b / top * CHART_H:.1f}"
            for t, b in self.points
        )
        return (
            f'<svg class="chart" viewBox="-4 -4 {CHART_W + 8} {CHART_H + 24}"'
            f' role="img" aria-label="remaining bytes over time">'
            f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{xy}"/>'
            f'<text x="0" y="{CHART_H + 18}">0 s</text>'
            f'<text x="{CHART_W}" y="{CHART_H + 18}" text-anchor="end">{span:.1f} s</text>'
            f'<text x="4" y="12">{size(top)} left</text></svg>'
        )


def live_numbers(progress: dict[str, Any]) -> list[tuple[str, str]]:
    """A migration's progress record as (label, value) rows, in the order a person reads
    them; a number the hypervisor did not report yet shows as "-"."""
    p = progress
    phase = str(p.get("phase", "queued"))
    rows = [("phase", phase)]
    if phase == "disks":
        rows += [
            ("disks copied", f"{size(p.get('done'))} of {size(p.get('total'))}"),
            ("disk bytes remaining", size(p.get("remaining"))),
        ]
    else:
        rows += [
            ("pass", str(p.get("iteration", "-"))),
            ("RAM sent", f"{size(p.get('done'))} of {size(p.get('total'))}"),
            ("RAM remaining", size(p.get("remaining"))),
            ("dirty rate", f"{size(p.get('dirty_rate_bytes'))}/s"),
            ("expected downtime", _ms(p.get("expected_downtime_ms"))),
            ("downtime limit", _ms(p.get("downtime_limit_ms"))),
            (
                "throttle",
                "-" if p.get("throttle_percent") is None else f"{p['throttle_percent']} %",
            ),
            ("last policy action", str(p.get("last_action") or "-")),
        ]
    mbps = p.get("mbps")
    rows.append(("rate", "-" if mbps is None else f"{mbps:.0f} Mbit/s"))
    eta = p.get("eta_s")
    rows.append(("ETA", "-" if not isinstance(eta, int | float) else f"{eta:.1f} s"))
    return rows


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.0f} ms"
