"""bhyve(8) for a simulated host.

Accepted as documented: `bhyve [-aACDeHhPSuWwxY] [-c [[cpus=]N][,sockets=S][,cores=C]
[,threads=T]] [-f ...] [-G ...] [-k file] [-K layout] [-l lpcdev[,conf]] [-m size[KMGT]]
[-o var=value] [-p vcpu:hostcpu] [-r file] [-R address[,port]] [-s slot,emulation[,conf]]
[-U uuid] vmname`; `-r` only where bhyve was built with BHYVE_SNAPSHOT, `-R` (the FreeBSD-UPB
migration work) only where it has migration. An unknown option prints
`bhyve: illegal option -- X` and the usage, exit 1.

Exit status as bhyve(8) documents it: 0 rebooted, 1 powered off, 2 halted, 3 triple fault,
4 exited due to an error. A guest that was suspended (`bhyvectl --suspend`) or sent away
(`--migrate`) also exits 0, after its VM was destroyed: the "looks like a reboot" hazard.
"""

from __future__ import annotations

import contextlib
import getopt
import json
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from tests.bhyve_sim import wire
from tests.bhyve_sim.guest import Guest
from tests.bhyve_sim.host import SimHost

OPTIONS = "aACDeHhPSuWwxYc:f:G:k:K:l:m:o:p:r:R:s:U:"
EMULATIONS = {
    "hostbridge",
    "amd_hostbridge",
    "lpc",
    "virtio-blk",
    "virtio-net",
    "virtio-rnd",
    "virtio-console",
    "virtio-scsi",
    "virtio-9p",
    "virtio-input",
    "ahci",
    "ahci-hd",
    "ahci-cd",
    "nvme",
    "e1000",
    "xhci",
    "fbuf",
    "uart",
    "passthru",
    "hda",
}
# bhyve picks a NIC's backend by the device name's prefix (net_backends.c); others fail.
NET_BACKENDS = ("tap", "vmnet", "netgraph", "netmap:", "vale")
LIVE_ROUNDS = 3
CHUNK_PAGES = 256
USAGE = (
    "Usage: bhyve [-aCDeHhPSuWwxY]\n"
    "       [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]]\n"
    "       [-k config_file] [-l lpc] [-m mem] [-o var=value]\n"
    "       [-p vcpu:hostcpu] [-r file] [-R host[,port]] [-s pci] [-U uuid] vmname\n"
)


class Refused(Exception):
    def __init__(self, message: str, status: int = 4) -> None:
        super().__init__(message)
        self.status = status


def size_of(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KkMmGgTt]?)", text)
    if not match:
        raise Refused(f"Invalid memsize '{text}'", 1)
    unit = match.group(2).upper()
    shift = {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}  # no suffix: mebibytes
    return int(match.group(1)) << shift[unit]


def topology(text: str) -> dict[str, int]:
    parts: dict[str, int] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not value:
            key, value = "cpus", key
        if key not in ("cpus", "sockets", "cores", "threads") or not value.isdigit():
            raise Refused(f"invalid cpu topology '{text}'", 1)
        parts[key] = int(value)
    s, c, t = parts.get("sockets", 1), parts.get("cores", 1), parts.get("threads", 1)
    cpus = parts.get("cpus", s * c * t)
    if s * c * t != cpus:
        raise Refused(f"invalid cpu topology '{text}'", 1)
    return {"cpus": cpus, "sockets": s, "cores": c, "threads": t}


class Vm:
    def __init__(self, host: SimHost, argv: list[str]) -> None:
        self.host = host
        self.config = host.config()
        opts, rest = getopt.getopt(argv, OPTIONS)
        if len(rest) != 1:
            raise Refused(USAGE.rstrip(), 1)
        self.name = rest[0]
        self.flags = {o for o, _ in opts if len(o) == 2 and o[1] in "aACDeHhPSuWwxY"}
        self.topology = {"cpus": 1, "sockets": 1, "cores": 1, "threads": 1}
        self.memsize = 256 << 20
        self.devices: list[str] = []
        self.console: Path | None = None
        self.bootrom: Path | None = None
        self.restore: Path | None = None
        self.receive: tuple[str, int] | None = None
        for opt, value in opts:
            if opt == "-r" and not self.config["snapshot"]:
                raise Refused("bhyve: illegal option -- r\n" + USAGE, 1)
            if opt == "-R" and not self.config["migration"]:
                raise Refused("bhyve: illegal option -- R\n" + USAGE, 1)
            match opt:
                case "-c":
                    self.topology = topology(value)
                case "-m":
                    self.memsize = size_of(value)
                case "-s":
                    self._slot(value)
                case "-l":
                    self._lpc(value)
                case "-r":
                    self.restore = Path(value)
                case "-R":
                    try:
                        self.receive = wire.parse_host_port(value)
                    except ValueError as exc:
                        raise Refused(f"invalid migration address '{value}'", 1) from exc
        if self.bootrom is None and self.restore is None and self.receive is None:
            raise Refused("no bootrom given and no guest loaded by bhyveload")

    def _slot(self, value: str) -> None:
        slot, _, rest = value.partition(",")
        emulation, _, conf = rest.partition(",")
        if not slot or emulation not in EMULATIONS:
            raise Refused(f'pci slot {slot}:0: unknown device "{emulation}"')
        if emulation in ("virtio-blk", "ahci-hd", "nvme"):
            path = Path(conf.split(",")[0])
            if not path.is_file():
                raise Refused(f"Could not open backing file: {path}: No such file or directory")
        if emulation in ("virtio-net", "e1000"):
            device = conf.split(",")[0]
            if not device.startswith(NET_BACKENDS):
                raise Refused(
                    f'net backend initialization failed: no backend for "{device}"\n'
                    "device emulation initialization error: Invalid argument"
                )
        self.devices.append(f"{slot},{emulation}")

    def _lpc(self, value: str) -> None:
        device, _, conf = value.partition(",")
        if device == "com1":
            self.console = Path(conf)
        elif device == "bootrom":
            if not Path(conf).is_file():
                raise Refused(f"bootrom: {conf}: No such file or directory")
            self.bootrom = Path(conf)
        elif device not in ("com2", "com3", "com4", "fwcfg"):
            raise Refused(f'Invalid lpc device "{device}"', 1)

    # -- what peers compare ----------------------------------------------------------------

    def specs(self) -> dict[str, Any]:
        sysctl = self.config["sysctl"]
        return {
            "machine": sysctl["hw.machine"],
            "model": sysctl["hw.model"],
            "pagesize": int(sysctl["hw.pagesize"]),
            "memsize": self.memsize,
            "cpus": self.topology["cpus"],
        }

    def kern_state(self, guest: Guest) -> dict[str, Any]:
        return {"vcpus": self.topology, "devices": self.devices, "counter": guest.counter()[0]}


class Running:
    """The VM once created: its vmm entry, guest, and control socket."""

    def __init__(self, vm: Vm) -> None:
        self.vm, self.host = vm, vm.host
        entry = self.host.vmm_dir / vm.name
        if entry.exists():
            with contextlib.suppress(ValueError, OSError):
                pid = json.loads(entry.read_text())["pid"]
                os.kill(pid, 0)
                raise Refused("vm_create: File exists")
        self.entry = entry
        page = int(vm.config["sysctl"]["hw.pagesize"])
        self.guest = Guest(self.host.memory_file(vm.name), vm.memsize, vm.console, page)

    def publish(self) -> None:
        """Appear under /dev/vmm (what `ls /dev/vmm` and the driver see)."""
        tmp = self.entry.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "memsize": self.vm.memsize}))
        tmp.rename(self.entry)

    def destroy(self) -> None:
        self.entry.unlink(missing_ok=True)
        self.host.control_socket(self.vm.name).unlink(missing_ok=True)

    def exit(self, status: int) -> None:
        sys.stdout.flush()
        os._exit(status)

    # -- boot paths ------------------------------------------------------------------------

    def boot(self) -> None:
        self.guest.wipe()
        self.guest.say("BOOTED")

    def restore_from(self, file: Path) -> None:
        try:
            meta = json.loads(Path(f"{file}.meta").read_text())
            memory = file.read_bytes()
        except (OSError, ValueError) as exc:
            raise Refused(f"Failed to restore checkpoint {file}: {exc}") from exc
        if meta["memsize"] != self.vm.memsize or len(memory) != self.vm.memsize:
            raise Refused(
                f"Restore: memory size mismatch (checkpoint {meta['memsize']},"
                f" -m {self.vm.memsize})"
            )
        if meta["devices"] != self.vm.devices:
            raise Refused("Restore: the device arguments differ from the checkpoint's")
        self.guest.write_page(0, memory)  # the whole memory at once

    def receive(self, address: tuple[str, int]) -> None:
        server = socket.create_server(address)
        self.start_control()
        self.publish()
        conn, _ = server.accept()
        server.close()
        with conn:
            header, _ = wire.recv(conn)
            theirs, mine = header.get("specs", {}), self.vm.specs()
            different = sorted(k for k in mine if theirs.get(k) != mine[k])
            if different:
                reason = "; ".join(
                    f"{k}: source {theirs.get(k)}, here {mine[k]}" for k in different
                )
                wire.send(conn, {"type": "error", "reason": f"specs differ: {reason}"})
                raise Refused(f"migration: specs differ: {reason}")
            wire.send(conn, {"type": "specs-ok"})
            while True:
                header, payload = wire.recv(conn)
                if header["type"] == "pages":
                    self._store_pages(header["indexes"], payload)
                elif header["type"] == "done":
                    wire.send(conn, {"type": "done-ok"})
                    break

    def _store_pages(self, indexes: list[int], payload: bytes) -> None:
        size = self.guest.page_size
        for n, index in enumerate(indexes):
            self.guest.write_page(index, payload[n * size : (n + 1) * size])

    # -- what bhyvectl asks ----------------------------------------------------------------

    def start_control(self) -> None:
        path = self.host.control_socket(self.vm.name)
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen(4)
        threading.Thread(target=self._serve, args=(server,), daemon=True).start()

    def _serve(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rw") as stream:
            request = json.loads(stream.readline())
            after: int | None = None
            try:
                after = self._do(request)
                reply: dict[str, Any] = {"ok": True}
            except (OSError, Refused, wire.StreamClosed) as exc:
                reply = {"ok": False, "error": str(exc)}
            stream.write(json.dumps(reply) + "\n")
            stream.flush()
        if after is not None:
            self.exit(after)

    def _do(self, request: dict[str, Any]) -> int | None:
        match request["cmd"]:
            case "reset":
                return 0
            case "poweroff":
                return 1
            case "checkpoint":
                return self._checkpoint(Path(request["file"]), bool(request["suspend"]))
            case "migrate":
                return self._migrate(request["host"], int(request["port"]), bool(request["live"]))
        raise Refused(f"unknown request {request['cmd']}")

    def _checkpoint(self, file: Path, suspend: bool) -> int | None:
        self.guest.pause()
        try:
            file.write_bytes(self.guest.mm[: self.guest.size])
            Path(f"{file}.kern").write_text(json.dumps(self.vm.kern_state(self.guest)))
            meta = {"vm": self.vm.name, **self.vm.specs(), "devices": self.vm.devices}
            Path(f"{file}.meta").write_text(json.dumps(meta))
        finally:
            if not suspend:
                self.guest.resume()
        if suspend:
            self.destroy()
            return 0
        return None

    def _migrate(self, host: str, port: int, live: bool) -> int | None:
        if "-S" not in self.vm.flags:
            raise Refused("migration needs wired guest memory (bhyve -S)")
        with socket.create_connection((host, port), timeout=30) as conn:
            conn.settimeout(60)
            wire.send(conn, {"type": "specs", "specs": self.vm.specs()})
            reply, _ = wire.recv(conn)
            if reply["type"] != "specs-ok":
                raise Refused(f"the destination refused: {reply.get('reason')}")
            everything = list(range(self.guest.pages))
            if live:
                self.guest.take_dirty()
                self._send_pages(conn, everything)
                for _ in range(LIVE_ROUNDS - 1):
                    self._send_pages(conn, self.guest.take_dirty())
            self.guest.pause()
            try:
                self._send_pages(conn, self.guest.take_dirty() if live else everything)
                wire.send(conn, {"type": "kern", "state": self.vm.kern_state(self.guest)})
                wire.send(conn, {"type": "done"})
                ack, _ = wire.recv(conn)
                if ack["type"] != "done-ok":
                    raise Refused(f"the destination did not complete: {ack}")
            except BaseException:
                self.guest.resume()  # a failure before the end: the guest runs on here
                raise
        self.destroy()
        return 0

    def _send_pages(self, conn: socket.socket, indexes: list[int]) -> None:
        for start in range(0, len(indexes), CHUNK_PAGES):
            chunk = indexes[start : start + CHUNK_PAGES]
            payload = b"".join(self.guest.page(i) for i in chunk)
            wire.send(conn, {"type": "pages", "indexes": chunk}, payload)


def main(argv: list[str], root: str) -> int:
    host = SimHost(Path(root))
    try:
        vm = Vm(host, argv)
        if "-h" in vm.flags:
            print(USAGE, file=sys.stderr)
            return 0
        running = Running(vm)
    except getopt.GetoptError as exc:
        print(f"bhyve: illegal option -- {exc.opt}\n{USAGE}", file=sys.stderr, end="")
        return 1
    except Refused as exc:
        print(
            f"bhyve: {exc}" if not str(exc).startswith(("bhyve", "Usage")) else exc, file=sys.stderr
        )
        return exc.status

    def power_button(*_: object) -> None:  # the guest powers off (ACPI), bhyve exits 1
        running.guest.say("POWEROFF")
        running.exit(1)

    signal.signal(signal.SIGTERM, power_button)
    try:
        if vm.receive is not None:
            running.receive(vm.receive)
        else:
            if vm.restore is not None:
                running.restore_from(vm.restore)
            else:
                running.boot()
            running.start_control()
            running.publish()
    except (Refused, OSError, wire.StreamClosed) as exc:
        print(f"bhyve: {exc}", file=sys.stderr)
        running.destroy()
        return 4
    running.guest.resume()
    running.guest.run_forever()
    return 0
