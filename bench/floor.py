"""The floor: a live migration driven by hand, two QEMUs and QMP, nothing of corral in the
loop (no CLI, agents, tasks or policy). The same QEMU command line as corral's (qemu_argv),
the same migration capabilities and parameters, the same lab link and certificates. With TLS
the floor uses QEMU's own TLS (what QMP by hand gives); corral carries a one-channel stream's
TLS in its agents' relay (hypervisors/qemu/tls_relay.py)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral import commands
from corral.errors import CorralError
from corral.hypervisors.base import VmLayout
from corral.hypervisors.qemu.cmdline import qemu_argv
from corral.hypervisors.qemu.qmp_session import qmp_call
from corral.hypervisors.tls_files import tls_dir_for
from corral.lab import netns
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode, LabPlan
from corral.model import BootSpec, CpuSpec, NicSpec, VmSpec, generate_mac
from corral.waiting import wait_for

PORT = 4900


def qmp(sock: Path, command: str, **args: Any) -> Any:
    """One QMP command on a fresh connection (a thin client: connect, negotiate, execute)."""
    return qmp_call(sock, command, args or None, timeout=30)


@dataclass
class FloorVm:
    """One guest and the node whose QEMU runs it now."""

    plan: LabPlan
    spec: VmSpec
    node: int = 0
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def make(
        cls,
        plan: LabPlan,
        img: GuestImage,
        name: str,
        host: int,
        memory_mib: int,
        dirty_mib: int = 0,
    ) -> FloorVm:
        ip = str(plan.guest_address(host).ip)
        spec = VmSpec(
            name=name,
            memory_mib=memory_mib,
            cpu=CpuSpec(),
            nics=(NicSpec(bridge="br0", mac=generate_mac(), tap=f"f{name}"[:15]),),
            boot=BootSpec(
                kernel=img.kernel,
                initrd=img.initrd,
                cmdline=guest_cmdline(ip=f"{ip}/24", dirty_mib=dirty_mib),
            ),
        )
        return cls(plan, spec)

    def layout(self, node: int) -> VmLayout:
        d = self.plan.nodes[node].local_dir / "floor" / self.spec.name
        return VmLayout(d, d / "checkpoints")

    def _spawn(self, node: int, incoming: bool) -> subprocess.Popen[bytes]:
        n: LabNode = self.plan.nodes[node]
        layout = self.layout(node)
        layout.runtime_dir.mkdir(parents=True, exist_ok=True)
        for stale in (layout.control_socket, layout.status_socket, layout.pid_file):
            stale.unlink(missing_ok=True)
        tap = self.spec.nics[0].tap
        commands.run(["ip", "-n", n.netns, "tuntap", "add", "dev", tap, "mode", "tap"])
        commands.run(["ip", "-n", n.netns, "link", "set", tap, "master", n.bridge, "up"])
        argv = qemu_argv(self.spec, layout, incoming="defer" if incoming else None)
        with (layout.runtime_dir / "qemu.log").open("ab") as log:
            proc = subprocess.Popen(
                netns.in_netns(n.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(layout.control_socket.exists, timeout=30, what="QEMU's QMP socket", interval=0.01)
        return proc

    def start(self) -> None:
        """Start the guest and wait until it counts (booted, like corral's VM)."""
        self.process = self._spawn(self.node, incoming=False)
        wait_for(
            lambda: "COUNTER" in self.console(), timeout=180, what="the floor guest", interval=0.2
        )

    def console(self) -> str:
        try:
            return self.layout(self.node).console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            n = self.plan.nodes[self.node]
            commands.run(["ip", "-n", n.netns, "link", "del", self.spec.nics[0].tap], check=False)
            self.process = None

    def migrate(
        self,
        *,
        tls: bool,
        channels: int = 1,
        bandwidth: int = 0,
        auto_converge: bool = True,
        throttle_threshold: int = 100,
        timeout: float = 600,
    ) -> dict[str, Any]:
        """Move the guest to the other node by hand; the wall time and QEMU's numbers."""
        src, dst = self.node, 1 - self.node
        t0 = time.monotonic()
        target = self._spawn(dst, incoming=True)
        dst_sock, src_sock = self.layout(dst).control_socket, self.layout(src).control_socket
        caps = {"events": True, "multifd": channels > 1, "postcopy-ram": False}
        params: dict[str, Any] = {}
        if channels > 1:
            params["multifd-channels"] = channels
        address = str(self.plan.nodes[dst].migration_address.ip)
        dst_params = dict(params)
        if tls:
            dst_params["tls-creds"] = self._tls(dst, "server")
        qmp(
            dst_sock,
            "migrate-set-capabilities",
            capabilities=[{"capability": k, "state": v} for k, v in caps.items()],
        )
        qmp(dst_sock, "migrate-set-parameters", **dst_params)
        qmp(dst_sock, "migrate-incoming", uri=f"tcp:{address}:{PORT}")
        caps["auto-converge"] = auto_converge
        qmp(
            src_sock,
            "migrate-set-capabilities",
            capabilities=[{"capability": k, "state": v} for k, v in caps.items()],
        )
        src_params = {
            **params,
            "max-bandwidth": bandwidth or 1 << 40,
            "downtime-limit": 300,
            "throttle-trigger-threshold": throttle_threshold,
            "cpu-throttle-initial": 20,
            "cpu-throttle-increment": 10,
        }
        if tls:
            src_params["tls-creds"] = self._tls(src, "client")
            src_params["tls-hostname"] = address
        qmp(src_sock, "migrate-set-parameters", **src_params)
        qmp(src_sock, "migrate", uri=f"tcp:{address}:{PORT}")
        deadline = time.monotonic() + timeout
        while True:
            info = qmp(src_sock, "query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                qmp(src_sock, "migrate_cancel")
                wait_for(
                    lambda: qmp(src_sock, "query-migrate")["status"] == "cancelled",
                    timeout=60,
                    what="the cancel",
                )
                target.kill()
                target.wait()
                n = self.plan.nodes[dst]
                commands.run(["ip", "-n", n.netns, "link", "del", self.spec.nics[0].tap])
                return {"completed": False, "wall_s": time.monotonic() - t0, "info": info}
            time.sleep(0.05)
        if info["status"] != "completed":
            raise RuntimeError(f"floor migration {info['status']}: {info.get('error-desc')}")
        wait_for(
            lambda: qmp(dst_sock, "query-status")["status"] == "running",
            timeout=60,
            what="the target to run",
            interval=0.01,
        )
        # A migration is over when the source's QEMU is gone and its tap deleted (libvirt's
        # and corral's times include that too).
        self.stop()
        wall = time.monotonic() - t0
        self.node, self.process = dst, target
        return {"completed": True, "wall_s": wall, "info": info}

    def _tls(self, node: int, endpoint: str) -> str:
        pki = self.plan.nodes[node].local_dir / "state" / "pki"
        folder = tls_dir_for(
            self.layout(node), endpoint, pki / "ca.pem", pki / "node.pem", pki / "node.key"
        )
        sock = self.layout(node).control_socket
        with contextlib.suppress(CorralError):  # it was the target before, as the server
            qmp(sock, "object-del", id="tls0")
        qmp(
            sock,
            "object-add",
            **{
                "qom-type": "tls-creds-x509",
                "id": "tls0",
                "dir": str(folder),
                "endpoint": endpoint,
                "verify-peer": True,
            },
        )
        return "tls0"
