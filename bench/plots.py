"""PNG plots of the latest results (matplotlib), next to their tables in bench/results/."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _median(cell: str) -> float:
    """The median a table cell starts with; NaN (no bar drawn) for a missing one, never 0."""
    match = re.match(r"[-+]?[\d.]+", str(cell))
    return float(match.group(0)) if match else float("nan")


def _bars(
    name: str, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str
) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(groups))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_all() -> list[Path]:
    made = []
    if (d := _load("overhead")) is not None:
        groups = [f"{r['memory']}, TLS {r['tls']}" for r in d["rows"]]
        made.append(
            _bars(
                "overhead",
                "Migration wall time: floor (QMP by hand) vs corral's API and CLI",
                groups,
                {
                    "floor": [_median(r["floor"]) for r in d["rows"]],
                    "corral API": [_median(r["api"]) for r in d["rows"]],
                    "corral CLI": [_median(r["corral"]) for r in d["rows"]],
                },
                "seconds (median)",
            )
        )
    if (d := _load("downtime")) is not None:
        groups = [str(r["dirty"]) for r in d["rows"]]
        made.append(
            _bars(
                "downtime",
                "Downtime by measure",
                groups,
                {k: [_median(r[k]) for r in d["rows"]] for k in ("qemu", "tcp", "ping")},
                "ms (median)",
            )
        )
    if (d := _load("throughput")) is not None:
        groups = [f"{r['channels']} ch, TLS {r['tls']}" for r in d["rows"]]
        made.append(
            _bars(
                "throughput",
                "Migration throughput vs the link (iperf3)",
                groups,
                {
                    "link": [_median(r["link"]) for r in d["rows"]],
                    "migration": [_median(r["migration"]) for r in d["rows"]],
                },
                "Mbit/s (median)",
            )
        )
    return made


if __name__ == "__main__":
    for path in plot_all():
        print(path)
