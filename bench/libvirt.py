"""corral against libvirt, the tool most users would otherwise pick: the same test guest
(256 MiB, idle, a NIC on the lab bridge) migrated live between the two lab nodes with
`virsh migrate --live` and with `corral migrate`, interleaved in one run: wall time, the
downtime each reports, and pings lost at a 10 ms interval from the client namespace.

libvirt runs as one system-mode libvirtd per lab node, in
that node's network namespace and a private mount namespace with its own state directories
and host UUID, listening on the node's migration address (TCP, no auth: lab only)."""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    Result,
    bench_lab,
    cell,
    command_line,
    corral,
    create_vm,
    image,
    interleaved,
    measured,
    migrate,
)
from corral.lab import netns, reaping
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode, LabPlan
from corral.lab.probes import PingMeter
from corral.model import generate_mac
from corral.waiting import wait_for

BIND = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
)
PING_INTERVAL = 0.01


@dataclass
class Libvirtd:
    node: LabNode
    process: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.node.migration_address.ip}/system"


def start_libvirtd(node: LabNode) -> Libvirtd:
    """A libvirtd of its own for `node`: state under the node's directory, bind-mounted over
    libvirt's paths in a private mount namespace, inside the node's network namespace."""
    base = node.local_dir / "libvirt"
    shutil.rmtree(base, ignore_errors=True)
    dirs = {path: base / path.strip("/").replace("/", "-") for path in BIND}
    for path, mine in dirs.items():
        if path == "/etc/libvirt":
            shutil.copytree(path, mine, symlinks=True)
        else:
            mine.mkdir(parents=True)
    etc = dirs["/etc/libvirt"]
    for autostart in etc.glob("qemu/networks/autostart/*"):
        autostart.unlink()  # no default network (dnsmasq) in the lab
    address = node.migration_address.ip
    (etc / "libvirtd.conf").write_text(
        textwrap.dedent(f"""\
        listen_tls = 0
        listen_tcp = 1
        listen_addr = "{address}"
        auth_tcp = "none"
        auth_unix_rw = "none"
        host_uuid = "{uuid.uuid4()}"
        """)
    )
    (etc / "qemu.conf").write_text(
        textwrap.dedent(f"""\
        security_driver = "none"
        namespaces = []
        cgroup_controllers = []
        user = "root"
        group = "root"
        remember_owner = 0
        stdio_handler = "file"
        migration_address = "{address}"
        """)
    )
    mounts = " && ".join(
        f"mkdir -p {path} && mount --bind {mine} {path}" for path, mine in dirs.items()
    )
    script = f"{mounts} && exec libvirtd --listen --pid-file {base}/libvirtd.pid"
    argv = netns.in_netns(
        node.netns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    )
    log = (base / "libvirtd.log").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    daemon = Libvirtd(node, proc)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"libvirtd exited: {(base / 'libvirtd.log').read_text()[-500:]}")
        return virsh(daemon, "version", check=False).returncode == 0

    wait_for(answers, timeout=60, what=f"libvirtd on {node.name}", interval=0.2)
    return daemon


def virsh(daemon: Libvirtd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = netns.in_netns(daemon.node.netns, ["virsh", "-c", daemon.uri, *args])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {out.stderr.strip()}")
    return out


def domain_xml(
    img: GuestImage,
    name: str,
    ip: str,
    memory_mib: int,
    *,
    disk: Path | None = None,
    disk_write_mib: int = 0,
) -> str:
    """The test guest as a libvirt domain: the same machine, CPU model and NIC as corral's;
    with `disk`, a qcow2 disk the guest writes `disk_write_mib` MiB/s to."""
    cmdline = guest_cmdline(ip=f"{ip}/24", disk_write_mib=disk_write_mib)
    disk_xml = (
        ""
        if disk is None
        else f"""
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2' cache='none'/>
              <source file='{disk}'/>
              <target dev='vda' bus='virtio'/>
            </disk>"""
    )
    return textwrap.dedent(f"""\
        <domain type='qemu'>
          <name>{name}</name>
          <memory unit='MiB'>{memory_mib}</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
            <kernel>{img.kernel}</kernel>
            <initrd>{img.initrd}</initrd>
            <cmdline>{cmdline}</cmdline>
          </os>
          <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_xml}
            <interface type='bridge'>
              <source bridge='br0'/>
              <mac address='{generate_mac()}'/>
              <model type='virtio'/>
            </interface>
            <serial type='pty'/>
          </devices>
        </domain>
        """)


def downtime_ms(daemon: Libvirtd, domain: str) -> float | None:
    """The completed job's downtime, as libvirt reports it (ms)."""
    out = virsh(daemon, "domjobinfo", domain, "--completed", check=False).stdout
    match = re.search(r"Total downtime:\s+(\d+)", out)
    return float(match.group(1)) if match else None


@dataclass
class Compare:
    plan: LabPlan
    daemons: list[Libvirtd]
    libvirt_ip: str
    corral_ip: str
    xml: Path
    libvirt_node: int = 0
    corral_node: int = 0

    def libvirt_side(self, _: int) -> dict[str, Any]:
        src, dst = self.daemons[self.libvirt_node], self.daemons[1 - self.libvirt_node]
        ping = PingMeter.start(self.plan, self.libvirt_ip, interval=PING_INTERVAL)
        migratable = virsh(src, "dumpxml", "--migratable", "lvguest").stdout
        self.xml.write_text(migratable)
        t0 = time.monotonic()
        virsh(
            src,
            "migrate",
            "--live",
            "--xml",
            str(self.xml),
            "lvguest",
            dst.uri,
            f"tcp://{dst.node.migration_address.ip}",
        )
        wall = time.monotonic() - t0
        sent, received = ping.stop()
        self.libvirt_node = 1 - self.libvirt_node
        return {
            "wall_s": wall,
            "downtime_ms": downtime_ms(dst, "lvguest") or downtime_ms(src, "lvguest"),
            "lost": sent - received,
        }

    def corral_side(self, _: int) -> dict[str, Any]:
        return self._corral("--insecure")

    def corral_tls_side(self, _: int) -> dict[str, Any]:
        return self._corral()

    def corral_tls_multifd_side(self, _: int) -> dict[str, Any]:
        return self._corral("--parallel", "2")

    def _corral(self, *args: str) -> dict[str, Any]:
        src = self.corral_node
        ping = PingMeter.start(self.plan, self.corral_ip, interval=PING_INTERVAL)
        wall, summary = migrate(
            self.plan.nodes[src], "cvguest", self.plan.nodes[1 - src].name, *args
        )
        sent, received = ping.stop()
        self.corral_node = 1 - src
        return {"wall_s": wall, "downtime_ms": summary["downtime_ms"], "lost": sent - received}


def _reap_until(stop: threading.Event) -> None:
    while not stop.wait(0.05):
        reaping.reap_zombie_children()


@contextmanager
def libvirt_daemons(plan: LabPlan) -> Iterator[list[Libvirtd]]:
    """A libvirtd per lab node, stopped afterwards. libvirt daemonizes QEMU, so an exited
    QEMU is re-parented to this process (the lab's subreaper; PID 1 here reaps nothing):
    it is reaped at once, or libvirt waits 40 s for it."""
    stop_reaping = threading.Event()
    reaper = threading.Thread(target=_reap_until, args=(stop_reaping,), daemon=True)
    reaper.start()
    daemons: list[Libvirtd] = []
    try:
        daemons += [start_libvirtd(node) for node in plan.nodes]
        yield daemons
    finally:
        stop_reaping.set()
        for daemon in daemons:
            daemon.process.terminate()
            try:
                daemon.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait()


def run(plan: LabPlan, runs: int) -> Result:
    img = image()
    result = Result(
        "libvirt",
        "corral against libvirt (virsh migrate --live)",
        "The same test guest (256 MiB, idle, virtio NIC on the lab bridge, qemu64 CPU, pc-q35-7.2,"
        " direct kernel boot), one under libvirt 9.0 and one under corral, each migrated back"
        " and forth between the two lab nodes over the migration network, interleaved. libvirt:"
        " `virsh migrate --live --xml (dumpxml --migratable) DOMAIN qemu+tcp://TARGET/system"
        " tcp://TARGET` (plain TCP, libvirt's default); corral: `corral migrate VM NODE"
        " --insecure` (plain TCP too), `corral migrate VM NODE` (its default: TLS with the"
        " cluster's certificates, checked against the target's name) and the same with"
        " `--parallel 2` (two multifd channels: TLS encrypts on two threads). Downtime as each"
        " reports it (libvirt: `domjobinfo --completed`; corral: QEMU's number), pings lost"
        " at 10 ms from the client. Each cell: median (min-max), n runs; the ratio is the"
        " median wall time over libvirt's.",
        [
            ("tool", "tool"),
            ("wall", "wall s"),
            ("ratio", "wall / libvirt's"),
            ("downtime", "downtime ms"),
            ("lost", "pings lost"),
        ],
    )
    with libvirt_daemons(plan) as daemons:
        libvirt_ip = str(plan.guest_address(90).ip)
        xml = plan.nodes[0].local_dir / "libvirt" / "guest.xml"
        xml.write_text(domain_xml(img, "lvguest", libvirt_ip, 256))
        virsh(daemons[0], "create", str(xml))
        wait_for(
            lambda: netns.pings(plan.client_netns, libvirt_ip),
            timeout=180,
            what="the libvirt guest to answer",
            interval=1,
        )
        corral_ip = create_vm(plan, img, "cvguest", host=91, memory_mib=256)
        wait_for(
            lambda: netns.pings(plan.client_netns, corral_ip),
            timeout=60,
            what="the corral guest to answer",
            interval=1,
        )
        case = Compare(plan, daemons, libvirt_ip, corral_ip, xml.with_name("migratable.xml"))
        sides = interleaved(
            {
                "libvirt": case.libvirt_side,
                "corral": case.corral_side,
                "corral, TLS": case.corral_tls_side,
                "corral, TLS, 2 channels": case.corral_tls_multifd_side,
            },
            runs,
        )
        base = statistics.median(measured([s["wall_s"] for s in sides["libvirt"]], "libvirt"))
        for tool, samples in sides.items():
            walls = measured([s["wall_s"] for s in samples], f"{tool} wall time")
            result.rows.append(
                {
                    "tool": tool,
                    "wall": cell(walls),
                    "ratio": f"{statistics.median(walls) / base:.2f}",
                    "downtime": cell([s["downtime_ms"] for s in samples], digits=0),
                    "lost": cell([s["lost"] for s in samples], digits=0),
                }
            )
        result.raw = sides
        virsh(daemons[case.libvirt_node], "destroy", "lvguest", check=False)
        corral(plan.nodes[case.corral_node], "vm", "kill", "cvguest")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("libvirtd") is None:
        print("libvirt is not installed: run scripts/install-libvirt.sh (make bench-libvirt)")
        return 5
    with bench_lab() as plan:
        run(plan, args.runs).write(command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
