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
import errno
import getopt
import json
import os
import re
import signal
import socket
import sys
import termios
import threading
import tty
from pathlib import Path
from typing import Any

from tests.bhyve_sim import guest_net, nmdm, wire
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
    """bhyve refuses and exits with `status` (bhyverun.c: errx(EX_USAGE) for a bad option
    value, exit(4) for what fails while the VM is set up). `bare`: the message is printed
    as it is (perror and fprintf), not after `bhyve: ` (errx)."""

    def __init__(self, message: str, status: int = 4, *, bare: bool = False) -> None:
        super().__init__(message)
        self.status, self.bare = status, bare


EX_USAGE = 64  # sysexits.h
MB = 1 << 20
EINVAL = 22


def size_of(text: str) -> int:
    """vm_parse_memsize (lib/libvmmapi/vmmapi.c): a bare number below one megabyte counts in
    megabytes, a larger one in bytes; else expand_number(3) (K, M, G, T, P, E suffixes)."""
    if text.isdigit():
        value = int(text)
        return value * MB if value < MB else value
    match = re.fullmatch(r"(\d+)([KkMmGgTtPpEe])[Bb]?", text)
    if not match:
        raise Refused(f"invalid memsize '{text}'", EX_USAGE)
    return int(match.group(1)) << (10 * ("KMGTPE".index(match.group(2).upper()) + 1))


def topology(text: str) -> dict[str, int]:
    """topology_parse then calc_topolopgy (usr.sbin/bhyve/bhyverun.c): `cpus=` or a bare
    number, `sockets=`, `cores=`, `threads=`; sockets default to the vCPU count. A token of
    another key is a usage error; a product that is not the vCPU count fails with exit 4."""
    parts: dict[str, str] = {}
    for item in text.split(",") if text else []:
        key, eq, value = item.partition("=")
        if not eq:
            key, value = "cpus", key
        elif key not in ("cpus", "sockets", "cores", "threads"):
            raise Refused(f"invalid cpu topology '{text}'", EX_USAGE)
        parts[key] = value

    def number(key: str, default: int) -> int:
        value = parts.get(key)
        if value is None:
            return default
        if not value.isdigit() or not 1 <= int(value) <= 0xFFFF:
            raise Refused(f"Invalid value for {key}: '{value}'")
        return int(value)

    cpus = number("cpus", 1)
    c, t = number("cores", 1), number("threads", 1)
    s = number("sockets", cpus)
    if "cpus" in parts and s * c * t != cpus:
        raise Refused(f"Topology ({s} sockets, {c} cores, {t} threads) does not match {cpus} vCPUs")
    return {"cpus": cpus if "cpus" in parts else s * c * t, "sockets": s, "cores": c, "threads": t}


def pci_slot(text: str) -> tuple[int, int, int]:
    """`bus:slot:func`, `slot:func` or `slot` (pci_emul.c, pci_parse_slot)."""
    numbers = text.split(":")
    if len(numbers) > 3 or not all(n.isdigit() for n in numbers):
        raise Refused(f'Invalid PCI slot info field "{text}"')
    values = [int(n) for n in numbers]
    bus, slot, func = {1: [0, *values, 0], 2: [0, *values], 3: values}[len(values)]
    if not (bus < 256 and slot < 32 and func < 8):
        raise Refused(f'Invalid PCI slot info field "{text}"')
    return bus, slot, func


class Vm:
    def __init__(self, host: SimHost, argv: list[str]) -> None:
        self.host = host
        self.config = host.config()
        opts, rest = getopt.getopt(argv, OPTIONS)
        if len(rest) != 1:
            raise Refused(USAGE.rstrip(), 1, bare=True)
        self.name = rest[0]
        self.flags = {o for o, _ in opts if len(o) == 2 and o[1] in "aACDeHhPSuWwxY"}
        self.topology = {"cpus": 1, "sockets": 1, "cores": 1, "threads": 1}
        self.memsize = 256 << 20
        self.devices: list[str] = []
        self.slots: set[tuple[int, int, int]] = set()
        self.nics: list[tuple[str, str]] = []  # (backend device, mac)
        self.console: Path | None = None
        self.bootrom: Path | None = None
        self.restore: Path | None = None
        self.receive: tuple[str, int] | None = None
        cpus = ""
        for opt, value in opts:
            if opt == "-r" and not self.config["snapshot"]:
                raise Refused("bhyve: illegal option -- r\n" + USAGE, 1, bare=True)
            if opt == "-R" and not self.config["migration"]:
                raise Refused("bhyve: illegal option -- R\n" + USAGE, 1, bare=True)
            match opt:
                case "-c":
                    topology(value)  # a usage error shows here, while options are read
                    cpus = value
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
                case "-h":
                    return  # usage(0) where -h is read: nothing after it is looked at
        self.topology = topology(cpus)
        if self.bootrom is None and self.restore is None and self.receive is None:
            raise Refused("virtual machine cannot be booted", bare=True)

    def _slot(self, value: str) -> None:
        """pci_parse_slot (pci_emul.c): the slot, the device, its options; a slot taken twice
        is refused. virtio-blk's path is the text up to the first ',' (blockif_legacy_config,
        block_if.c): a ',' in a path splits it, and the rest is read as options."""
        slot_text, comma, rest = value.partition(",")
        if not comma:
            raise Refused(f'Invalid PCI slot info field "{value}"')
        bus, slot, func = pci_slot(slot_text)
        emulation, _, conf = rest.partition(",")
        if emulation not in EMULATIONS:
            raise Refused(f'pci slot {bus}:{slot}:{func}: unknown device "{emulation}"', bare=True)
        if (bus, slot, func) in self.slots:
            raise Refused(f"pci slot {bus}:{slot}:{func} already occupied!", bare=True)
        self.slots.add((bus, slot, func))
        if emulation in ("virtio-blk", "ahci-hd", "nvme"):
            path = Path(conf.split(",")[0])
            if not path.is_file():
                raise Refused(f"Could not open backing file: {path}: No such file or directory")
        if emulation in ("virtio-net", "e1000"):
            device, *options = conf.split(",")
            if not device.startswith(NET_BACKENDS):
                raise Refused(
                    f'net backend initialization failed: no backend for "{device}"\n'
                    "device emulation initialization error: Invalid argument"
                )
            macs = [o.removeprefix("mac=") for o in options if o.startswith("mac=")]
            self.nics.append((device, macs[0] if macs else "58:9c:fc:00:00:01"))
        self.devices.append(f"{slot},{emulation}")

    def _lpc(self, value: str) -> None:
        """lpc_device_parse (pci_lpc.c): `com1,BACKEND` keeps the whole rest as the backend
        (opened at start, uart_backend.c); `bootrom,ROMFILE[,VARFILE]` splits at ','."""
        device, _, conf = value.partition(",")
        if device == "com1":
            self.console = Path(conf)
        elif device == "bootrom":
            romfile = conf.split(",")[0]
            if not Path(romfile).is_file():
                raise Refused(f"bootrom: {romfile}: No such file or directory")
            self.bootrom = Path(romfile)
        elif device not in ("com2", "com3", "com4", "fwcfg"):
            raise Refused(f"invalid lpc device configuration '{value}'", EX_USAGE)

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
        """bhyverun.c's main after the options, in its order: do_open (vm_create, or
        vm_reinit of a VM of that name), the vCPU limit, vm_setup_memory, then the devices
        (init_pci: the lpc's com1 backend)."""
        self.vm, self.host = vm, vm.host
        config = vm.config
        if "vmm" not in config["kld"]:  # hw.vmm.create does not exist without vmm.ko
            raise Refused("vm_create: No such file or directory", bare=True)
        entry = self.host.vmm_dir / vm.name
        if entry.exists():  # EEXIST with a bootrom: vm_reinit, refused while it runs
            with contextlib.suppress(ValueError, OSError):
                pid = json.loads(entry.read_text())["pid"]
                os.kill(pid, 0)
                raise Refused("vm_reinit: Device busy", bare=True)
        self.entry = entry
        maxcpu = int(config["sysctl"]["hw.vmm.maxcpu"])  # num_vcpus_allowed
        if vm.topology["cpus"] > maxcpu:
            cpus = vm.topology["cpus"]
            raise Refused(f"{cpus} vCPUs requested but only {maxcpu} available", bare=True)
        page = int(config["sysctl"]["hw.pagesize"])
        if vm.memsize % page:  # vm_alloc_memseg in vmm.c: EINVAL unless page-aligned
            raise Refused(f"Unable to setup memory ({EINVAL})", bare=True)
        self.taps = [self.open_nic(device) for device, _ in vm.nics]  # slots before lpc's 31
        console = self.open_console(vm.console) if vm.console is not None else None
        self.guest = Guest(self.host.memory_file(vm.name), vm.memsize, console, page)

    def open_nic(self, device: str) -> int:
        try:
            return guest_net.open_tap(device)
        except OSError as exc:
            raise Refused(
                f"{exc.strerror or exc}\nnet backend initialization failed\n"
                "device emulation initialization error: No such file or directory",
                bare=True,
            ) from exc

    def serve_network(self) -> None:
        """The guest answers on its NICs (ARP, ping) if its OS has an address."""
        ip = self.vm.config.get("guests", {}).get(self.vm.name, {}).get("ip")
        if ip is None:
            return
        for fd, (_, mac) in zip(self.taps, self.vm.nics, strict=True):
            guest_net.serve(fd, mac, ip, lambda: not self.guest.paused)

    def open_console(self, path: Path) -> int:
        """uart_tty_open (usr.sbin/bhyve/uart_backend.c): "stdio", "tcp=..." or a path that
        is opened O_RDWR|O_NONBLOCK and must be a tty (isatty), then set raw (ttyopen).
        Opening a missing /dev/nmdmN[AB] creates the pair where nmdm.ko is loaded."""
        if str(path) == "stdio":
            return os.dup(1)
        pair = re.fullmatch(r"nmdm(\d+)[AB]", path.name)
        in_dev = path.parent == self.host.root / "dev" and not path.is_symlink()
        if pair is not None and in_dev and "nmdm" in self.vm.config["kld"]:
            nmdm.clone(self.host.root, int(pair.group(1)))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)  # BSD: no ctty
        except OSError as exc:
            raise self._no_backend(path, exc.strerror or str(exc)) from exc
        if not os.isatty(fd):
            os.close(fd)
            raise self._no_backend(path, os.strerror(errno.ENOTTY))
        tty.setraw(fd, termios.TCSANOW)  # ttyopen: cfmakeraw, tcsetattr(TCSANOW)
        return fd

    @staticmethod
    def _no_backend(path: Path, why: str) -> Refused:
        return Refused(
            f"Unable to initialize backend '{path}' for LPC device com1\n"
            f"device emulation initialization error: {why}",
            bare=True,
        )

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
        print(exc if exc.bare else f"bhyve: {exc}", file=sys.stderr)
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
    running.serve_network()
    running.guest.resume()
    running.guest.run_forever()
    return 0
