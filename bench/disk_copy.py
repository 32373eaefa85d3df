"""`make bench-disk`: live migration with local disks, corral against libvirt. A guest with
a 1 GiB disk holding 512 MiB of data (no shared storage: a local-storage lab), once idle and
once writing about 4 MiB/s of random data to that disk, moved back and forth between the
two lab nodes:

- corral: `corral migrate VM NODE --with-local-disks`, with TLS (its default) and without
  (`--insecure`);
- libvirt: `virsh migrate --live --copy-storage-all` (plain TCP, libvirt's default; the
  target's image pre-created empty, as libvirt needs for a disk outside a storage pool).

Per migration: the wall time, the bytes that crossed the migration link (the source's
interface counters: RAM, disk and protocol together), and with the link's TCP throughput
(iperf3, in the same run) the ratio wall / (bytes / throughput): 1.0 would be a migration
that costs nothing but moving its bytes at the link's speed. For corral, also the disk
copy's own throughput against the same migration's RAM throughput."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    Result,
    bench_lab,
    cell,
    command_line,
    corral,
    corral_ok,
    create_vm,
    image,
    interleaved,
    measured,
    migrate,
    wait_booted,
)
from bench.libvirt import Libvirtd, domain_xml, libvirt_daemons, virsh
from bench.throughput import iperf
from corral.commands import run as run_command
from corral.lab import netns
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for

DISK_MIB = 1024
DATA_MIB = 512
WRITE_MIB_S = 4
LOADS = {"idle": 0, f"writing {WRITE_MIB_S} MiB/s": WRITE_MIB_S}


def fill(disk: Path) -> None:
    """Write DATA_MIB of data into the image (from 1 MiB), before its guest starts."""
    run_command(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 1M {DATA_MIB}M", str(disk)])


def tx_bytes(node: LabNode) -> int:
    """Bytes sent so far on the node's migration interface."""
    out = subprocess.run(
        netns.in_netns(node.netns, ["cat", "/sys/class/net/mig0/statistics/tx_bytes"]),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


@dataclass
class LibvirtGuest:
    """One libvirt domain whose disk lives in the directory of the node that runs it."""

    plan: LabPlan
    daemons: list[Libvirtd]
    name: str
    at: int = 0

    def disk(self, node: int) -> Path:
        return self.plan.nodes[node].local_dir / "libvirt-disks" / f"{self.name}.qcow2"

    def boot(self, img: GuestImage, ip: str, write_mib: int) -> None:
        disk = self.disk(0)
        disk.parent.mkdir(parents=True, exist_ok=True)
        run_command(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{DISK_MIB}M"])
        fill(disk)
        xml = disk.with_suffix(".xml")
        xml.write_text(domain_xml(img, self.name, ip, 256, disk=disk, disk_write_mib=write_mib))
        virsh(self.daemons[0], "create", str(xml))

    def migrate(self) -> float:
        src, dst = self.at, 1 - self.at
        source_disk, target_disk = self.disk(src), self.disk(dst)
        target_disk.parent.mkdir(parents=True, exist_ok=True)
        target_disk.unlink(missing_ok=True)  # a new, empty image, as corral's target makes
        size = str(DISK_MIB * 1024 * 1024)
        run_command(["qemu-img", "create", "-q", "-f", "qcow2", str(target_disk), size])
        xml = target_disk.with_suffix(".migrate.xml")
        described = virsh(self.daemons[src], "dumpxml", "--migratable", self.name).stdout
        xml.write_text(described.replace(str(source_disk), str(target_disk)))
        dst_node = self.daemons[dst].node
        t0 = time.monotonic()
        virsh(
            self.daemons[src],
            "migrate",
            "--live",
            "--copy-storage-all",
            "--xml",
            str(xml),
            self.name,
            self.daemons[dst].uri,
            f"tcp://{dst_node.migration_address.ip}",
        )
        wall = time.monotonic() - t0
        source_disk.unlink(missing_ok=True)  # as corral removes the source's image
        self.at = dst
        return wall


@dataclass
class Sides:
    plan: LabPlan
    vm: str  # the corral guest
    guest: LibvirtGuest
    link_mbps: list[float]
    corral_at: int = 0

    def _measured(self, src: int, move: Any) -> dict[str, Any]:
        node = self.plan.nodes[src]
        before = tx_bytes(node)
        out: dict[str, Any] = move()
        out["link_bytes"] = tx_bytes(node) - before
        link = statistics.median(self.link_mbps) * 1e6 / 8
        out["ratio"] = out["wall_s"] / (out["link_bytes"] / link)
        return out

    def corral(self, *args: str) -> dict[str, Any]:
        src = self.corral_at

        def move() -> dict[str, Any]:
            target = self.plan.nodes[1 - src].name
            wall, summary = migrate(
                self.plan.nodes[src], self.vm, target, "--with-local-disks", *args
            )
            disks = summary["disks"]
            return {
                "wall_s": wall,
                "disk_mbps": disks["throughput_mbps"],
                "ram_mbps": summary["throughput_mbps"],
                "disk_s": disks["copy_s"],
                "downtime_ms": summary["downtime_ms"],
            }

        out = self._measured(src, move)
        self.corral_at = 1 - src
        return out

    def libvirt(self) -> dict[str, Any]:
        return self._measured(self.guest.at, lambda: {"wall_s": self.guest.migrate()})


def ram_reference(plan: LabPlan, img: GuestImage, runs: int) -> dict[bool, list[float]]:
    """corral's own RAM-transfer throughput in this run (Mbit/s, QEMU's, by TLS): a guest
    without a local disk whose RAM is dense (64 MiB rewritten with random bytes), moved
    back and forth, as `make bench-throughput` measures it."""
    create_vm(plan, img, "cram", host=120, memory_mib=256, dirty_mib=64)
    at = [0]

    def move(*args: str) -> dict[str, Any]:
        src = at[0]
        # No disk to copy; the flag lets its config move (nothing is shared in this lab).
        target = plan.nodes[1 - src].name
        wall, summary = migrate(plan.nodes[src], "cram", target, "--with-local-disks", *args)
        at[0] = 1 - src
        return {"wall_s": wall, "mbps": summary["throughput_mbps"]}

    samples = interleaved(
        {"plain": lambda _run: move("--insecure"), "TLS": lambda _run: move()}, runs
    )
    corral(plan.nodes[at[0]], "vm", "kill", "cram")
    return {
        False: [s["mbps"] for s in samples["plain"]],
        True: [s["mbps"] for s in samples["TLS"]],
    }


def one_load(
    plan: LabPlan,
    img: GuestImage,
    daemons: list[Libvirtd],
    index: int,
    load: str,
    write_mib: int,
    link_mbps: list[float],
    runs: int,
    result: Result,
    ram_mbps: dict[bool, list[float]],
) -> None:
    """Both guests of one load booted, moved `runs` times by each tool, and its rows."""
    vm = f"cdisk{index}"
    corral_ip = str(plan.guest_address(100 + index).ip)
    corral_ok(
        plan.nodes[0],
        "vm",
        "create",
        vm,
        "--memory",
        "256",
        "--nic",
        "br0",
        "--disk",
        str(DISK_MIB),
        "--kernel",
        str(img.kernel),
        "--initrd",
        str(img.initrd),
        "--cmdline",
        guest_cmdline(ip=f"{corral_ip}/24", disk_write_mib=write_mib),
    )
    shown = json.loads(corral_ok(plan.nodes[0], "vm", "show", vm, "--json"))
    fill(Path(shown["spec"]["disks"][0]["path"]))
    corral_ok(plan.nodes[0], "vm", "start", vm)
    wait_booted(plan.nodes[0], vm)
    guest = LibvirtGuest(plan, daemons, f"lvdisk{index}")
    libvirt_ip = str(plan.guest_address(110 + index).ip)
    guest.boot(img, libvirt_ip, write_mib)
    wait_for(
        lambda: netns.pings(plan.client_netns, libvirt_ip),
        timeout=180,
        what="the libvirt guest to answer",
        interval=1,
    )
    sides = Sides(plan, vm, guest, link_mbps)
    samples = interleaved(
        {
            "libvirt": lambda _run: sides.libvirt(),
            "corral": lambda _run: sides.corral("--insecure"),
            "corral, TLS": lambda _run: sides.corral(),
        },
        runs,
    )
    link_mbps += [iperf(plan, 0)]
    base = statistics.median(measured([s["wall_s"] for s in samples["libvirt"]], load))
    for tool, found in samples.items():
        walls = measured([s["wall_s"] for s in found], f"{tool} wall")
        disk_mbps = [s["disk_mbps"] for s in found if s.get("disk_mbps")]
        reference = statistics.median(ram_mbps["TLS" in tool]) if tool != "libvirt" else None
        result.rows.append(
            {
                "load": load,
                "tool": tool,
                "wall": cell(walls),
                "vs": f"{statistics.median(walls) / base:.2f}",
                "link": cell([s["link_bytes"] / 1e6 for s in found], digits=0),
                "ideal": cell([s["ratio"] for s in found]),
                "disk": cell([s.get("disk_s") for s in found]),
                "disk_mbps": cell(disk_mbps, digits=0) if disk_mbps else "-",
                "share": (
                    f"{statistics.median(disk_mbps) / reference:.2f}"
                    if disk_mbps and reference
                    else "-"
                ),
            }
        )
    result.raw[load] = samples
    virsh(daemons[guest.at], "destroy", guest.name, check=False)
    corral(plan.nodes[sides.corral_at], "vm", "kill", vm)


def run(plan: LabPlan, runs: int) -> Result:
    img = image()
    result = Result(
        "disk-copy",
        "Live migration with local disks: corral against libvirt",
        f"A guest of 256 MiB RAM with a {DISK_MIB} MiB qcow2 disk holding {DATA_MIB} MiB of"
        " data, in a lab without shared storage, moved back and forth between the two nodes:"
        " idle, and writing about 4 MiB/s of random data at random places of that data"
        " (1 MiB O_DIRECT writes). corral: `corral migrate VM NODE --with-local-disks`, TLS"
        " (its default) and `--insecure`; libvirt 9.0: `virsh migrate --live"
        " --copy-storage-all` over plain TCP (its default), the target's image pre-created"
        " empty. *link MB*: bytes that crossed the migration link (the source's interface"
        " counter); *wall / ideal*: the wall time over link MB at the link's TCP throughput"
        " (iperf3 between the nodes, in the same run); *disk copy Mbit/s*: corral's disk-copy"
        " throughput (data bytes / copy time); *disk / RAM*: that over corral's own RAM"
        " throughput in this run with the same stream (QEMU's Mbit/s moving a 256 MiB guest"
        " that dirties 64 MiB with random bytes and has no local disk: the first rows; the"
        " test guests' own RAM is mostly zero pages, whose rate says little). Interleaved;"
        " median (min-max) of n runs.",
        [
            ("load", "guest"),
            ("tool", "tool"),
            ("wall", "wall s"),
            ("vs", "wall / libvirt's"),
            ("link", "link MB"),
            ("ideal", "wall / ideal"),
            ("disk", "disk copy s"),
            ("disk_mbps", "disk copy Mbit/s"),
            ("share", "disk / RAM Mbit/s"),
        ],
    )
    with libvirt_daemons(plan) as daemons:
        link_mbps = [iperf(plan, 0), iperf(plan, 1)]
        ram_mbps = ram_reference(plan, img, runs)
        for tls, found in ram_mbps.items():
            result.rows.append(
                {
                    "load": "RAM reference (no local disk, 64 MiB dirtied)",
                    "tool": "corral, TLS" if tls else "corral",
                    "disk_mbps": f"RAM {cell(found, digits=0)}",
                }
            )
        result.raw["ram_mbps"] = {str(k): v for k, v in ram_mbps.items()}
        for index, (load, write_mib) in enumerate(LOADS.items()):
            one_load(plan, img, daemons, index, load, write_mib, link_mbps, runs, result, ram_mbps)
        result.notes.append(
            "link throughput (iperf3, Mbit/s, each direction at the start, then after each"
            f" load): {', '.join(f'{m:.0f}' for m in link_mbps)}"
        )
        result.raw["link_mbps"] = link_mbps
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("libvirtd") is None:
        print("libvirt is not installed: run scripts/install-libvirt.sh (make bench-disk)")
        return 5
    with bench_lab(storage="local") as plan:
        run(plan, args.runs).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
