"""Booting the test guest inside a lab node, outside any agent: for the foundation demo,
the tests of the lab itself, and the benchmarks' floor (QEMU driven directly).

The guest's NIC is a tap in the node's guest bridge, so it is reachable from the client
namespace; its console goes to a log file read by `console_lines()`.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from corral import commands
from corral.hypervisors.base import VmLayout
from corral.hypervisors.qemu.cmdline import qemu_argv
from corral.lab import netns
from corral.lab.image import GuestImage, guest_cmdline
from corral.lab.plan import LabNode, LabPlan
from corral.model import BootSpec, CpuSpec, DiskSpec, NicSpec, VmSpec, generate_mac
from corral.waiting import wait_for

COUNTER_RE = re.compile(r"^COUNTER (\d+) ([\d.]+)$")
COUNTER_PORT = 7000
ANSI_ESCAPE_RE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


@dataclass(frozen=True)
class Counter:
    """One counter line: its sequence number and the guest's uptime in seconds."""

    seq: int
    uptime: float


def parse_counter(line: str) -> Counter | None:
    """The counter in a `COUNTER <seq> <uptime>` line, or None for any other line."""
    match = COUNTER_RE.match(line.strip())
    return Counter(int(match.group(1)), float(match.group(2))) if match else None


class LabGuest:
    """The test guest running under QEMU in one lab node."""

    def __init__(
        self,
        plan: LabPlan,
        node: LabNode,
        image: GuestImage,
        *,
        name: str = "guest",
        host_number: int = 10,
        memory_mib: int = 256,
        cpu: CpuSpec | None = None,
        dirty_mib: int = 0,
        disk_mib: int = 0,
    ) -> None:
        self.plan, self.node = plan, node
        self.address = plan.guest_address(host_number)
        self.run_dir = node.local_dir / "guests" / name
        self.layout = VmLayout(self.run_dir, self.run_dir / "checkpoints")
        self.tap = f"t-{name}"[:15]
        disks: tuple[DiskSpec, ...] = ()
        if disk_mib:
            disks = (DiskSpec(path=plan.storage_dir(node) / f"{name}.qcow2"),)
        self.disk_mib = disk_mib
        self.spec = VmSpec(
            name=name,
            memory_mib=memory_mib,
            cpu=cpu or CpuSpec(),
            disks=disks,
            nics=(NicSpec(bridge=node.bridge, mac=generate_mac(), tap=self.tap),),
            boot=BootSpec(
                kernel=image.kernel,
                initrd=image.initrd,
                cmdline=guest_cmdline(
                    ip=str(self.address),
                    port=COUNTER_PORT,
                    dirty_mib=dirty_mib,
                    disk="vda" if disk_mib else None,
                ),
            ),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Create the tap and disk, then start QEMU in the node's namespace."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.layout.console_log.unlink(missing_ok=True)
        for disk in self.spec.disks:
            commands.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(disk.path), f"{self.disk_mib}M"]
            )
        ns = self.node.netns
        commands.run(["ip", "-n", ns, "tuntap", "add", "dev", self.tap, "mode", "tap"])
        commands.run(["ip", "-n", ns, "link", "set", self.tap, "master", self.node.bridge, "up"])
        with (self.run_dir / "qemu.log").open("wb") as log:
            self.process = subprocess.Popen(
                netns.in_netns(ns, qemu_argv(self.spec, self.layout)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def console_lines(self) -> list[str]:
        """Every line the guest printed on its serial console so far."""
        try:
            text = self.layout.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        # The firmware clears the screen with escape sequences before the kernel starts.
        return [ANSI_ESCAPE_RE.sub("", line).strip("\r") for line in text.splitlines()]

    def last_counter(self) -> Counter | None:
        """The latest counter line on the console."""
        for line in reversed(self.console_lines()):
            if (counter := parse_counter(line)) is not None:
                return counter
        return None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            log = (self.run_dir / "qemu.log").read_text(errors="replace").strip()
            raise RuntimeError(f"QEMU exited with {self.process.returncode}: {log[-500:]}")

    def wait_booted(self, timeout: float = 120.0) -> None:
        """Wait for the guest's BOOTED line."""

        def booted() -> bool:
            self._check_alive()
            return any("BOOTED" in line for line in self.console_lines())

        wait_for(booted, timeout=timeout, what=f"guest {self.spec.name} to boot", interval=0.1)

    def ping_from_client(self, count: int = 1, timeout_s: int = 2) -> bool:
        """True when the guest answers `count` pings sent from the client namespace."""
        return netns.pings(self.plan.client_netns, str(self.address.ip), count, timeout_s)

    def connect_counter(self, timeout: float = 5.0) -> socket.socket:
        """A TCP connection from the client namespace to the guest's counter stream."""
        return netns.connect_in(self.plan.client_netns, str(self.address.ip), COUNTER_PORT, timeout)

    def stop(self) -> None:
        """Stop QEMU (SIGTERM, then SIGKILL) and remove the tap; idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        commands.run(["ip", "-n", self.node.netns, "link", "del", self.tap], check=False)
        for disk in self.spec.disks:
            Path(disk.path).unlink(missing_ok=True)

    def __enter__(self) -> LabGuest:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
