"""Migration throughput against the link's own TCP throughput, measured in the same run
(iperf3 between the two node namespaces over the migration network), with 1, 2 and 4
multifd channels, TLS on and off."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

from bench.harness import (
    Result,
    bench_lab,
    command_line,
    corral_ok,
    create_vm,
    fmt,
    image,
    migrate,
    spread,
)
from corral.lab import netns
from corral.lab.plan import LabPlan

IPERF_PORT = 5201


def iperf(plan: LabPlan, src: int, seconds: int = 3) -> float:
    """TCP throughput from node `src` to the other over the migration link, Mbit/s."""
    server_node, client_node = plan.nodes[1 - src], plan.nodes[src]
    address = str(server_node.migration_address.ip)
    serve = ["iperf3", "-s", "-1", "-B", address, "-p", str(IPERF_PORT)]
    ask = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    server = subprocess.Popen(
        netns.in_netns(server_node.netns, serve),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):  # the server needs a moment to listen
            out = subprocess.run(
                netns.in_netns(client_node.netns, ask), capture_output=True, text=True, check=False
            )
            data: dict[str, Any] = json.loads(out.stdout or "{}")
            if out.returncode == 0 and "sum_received" in data.get("end", {}):
                return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 failed: {out.stdout[-300:]}{out.stderr[-300:]}")
    finally:
        server.kill()
        server.wait()


def run(plan: LabPlan, runs: int, channels: list[int]) -> Result:
    img = image()
    result = Result(
        "throughput",
        "Migration throughput against the link",
        "`corral migrate` of a 512 MiB test guest that rewrites 64 MiB of its memory with"
        " random bytes (so pages are not all zero), no bandwidth limit; throughput is QEMU's"
        " own `mbps` for the migration. *link*: iperf3 over the same veth pair between the"
        " two node namespaces, 3 s, run just before each migration. Median (min-max).",
        [
            ("channels", "multifd channels"),
            ("tls", "TLS"),
            ("link", "link Mbit/s (iperf3)"),
            ("migration", "migration Mbit/s"),
            ("share", "migration / link"),
            ("wall", "migration s"),
        ],
    )
    vm = "tput"
    create_vm(plan, img, vm, host=60, memory_mib=512, dirty_mib=64)
    node = 0
    try:
        for n in channels:
            for tls in (False, True):
                links, rates, walls = [], [], []
                for _ in range(runs):
                    links.append(iperf(plan, node))
                    args = ["--parallel", str(n)] + ([] if tls else ["--insecure"])
                    wall, summary = migrate(plan.nodes[node], vm, plan.nodes[1 - node].name, *args)
                    rates.append(float(summary["throughput_mbps"]))
                    walls.append(wall)
                    node = 1 - node
                link, rate = spread(links), spread(rates)
                result.rows.append(
                    {
                        "channels": n,
                        "tls": "on" if tls else "off",
                        "link": fmt(link, digits=0),
                        "migration": fmt(rate, digits=0),
                        "share": f"{rate['median'] / link['median']:.2f}",
                        "wall": fmt(spread(walls)),
                    }
                )
                result.raw[f"{n}-{'tls' if tls else 'plain'}"] = {
                    "link_mbps": links,
                    "migration_mbps": rates,
                    "wall_s": walls,
                }
    finally:
        corral_ok(plan.nodes[node], "vm", "kill", vm)
        corral_ok(plan.nodes[node], "vm", "delete", vm)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--channels", default="1,2,4")
    args = parser.parse_args()
    with bench_lab() as plan:
        run(plan, args.runs, [int(c) for c in args.channels.split(",")]).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
