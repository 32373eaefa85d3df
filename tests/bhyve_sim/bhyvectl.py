"""bhyvectl(8) for a simulated host: `--vm=NAME` with `--destroy`, `--force-reset`,
`--force-poweroff`, `--get-stats`; `--checkpoint=FILE` and `--suspend=FILE` where bhyve was
built with BHYVE_SNAPSHOT; `--migrate=HOST[,PORT]` and `--migrate-live=HOST[,PORT]` where it
has the FreeBSD-UPB migration. The usage lists exactly what this host's bhyvectl has (the
driver probes it), and an unknown option is refused as getopt_long does, usage, exit 1."""

from __future__ import annotations

import contextlib
import getopt
import json
import os
import signal
import socket
import sys
from pathlib import Path

from tests.bhyve_sim import wire
from tests.bhyve_sim.host import SimHost

BASE = ["vm=", "create", "destroy", "force-reset", "force-poweroff", "get-stats", "cpu="]
SNAPSHOT = ["checkpoint=", "suspend="]
MIGRATION = ["migrate=", "migrate-live="]


def usage(options: list[str]) -> str:
    lines = ["Usage: bhyvectl --vm=<vmname>"]
    for option in options[1:]:
        name = option.rstrip("=")
        lines.append(f"       [--{name}{'=<' + name + '>' if option.endswith('=') else ''}]")
    return "\n".join(lines) + "\n"


def ask(host: SimHost, vm: str, request: dict[str, object]) -> str | None:
    """Send a request to the VM's bhyve; None on success, else its error."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(host.control_socket(vm)))
        except OSError as exc:
            return f"cannot reach the VM's bhyve: {exc.strerror}"
        stream = sock.makefile("rw")
        stream.write(json.dumps(request) + "\n")
        stream.flush()
        line = stream.readline()
    if not line:
        return "the VM's bhyve closed the connection"
    answer = json.loads(line)
    return None if answer.get("ok") else str(answer.get("error"))


def main(argv: list[str], root: str) -> int:
    host = SimHost(Path(root))
    config = host.config()
    options = (
        BASE + (SNAPSHOT if config["snapshot"] else []) + (MIGRATION if config["migration"] else [])
    )
    try:
        opts, rest = getopt.getopt(argv, "", options)
    except getopt.GetoptError as exc:
        print(
            f"bhyvectl: unrecognized option `--{exc.opt}'\n{usage(options)}",
            file=sys.stderr,
            end="",
        )
        return 1
    given = dict(opts)
    vm = given.get("--vm")
    if rest or not vm or len(given) < 2:
        print(usage(options), file=sys.stderr, end="")
        return 1
    entry = host.vmm_dir / vm
    if not entry.exists():
        print(f"vm_open: {vm} could not be opened: No such file or directory", file=sys.stderr)
        return 1
    error: str | None = None
    if "--destroy" in given:
        info = json.loads(entry.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), signal.SIGKILL)  # its bhyve cannot run on without the VM
        entry.unlink(missing_ok=True)
        host.control_socket(vm).unlink(missing_ok=True)
    elif "--get-stats" in given:
        print(f"vcpu0\nnumber of ticks vcpu was idle\t{os.getpid()}")
    elif "--force-reset" in given:
        error = ask(host, vm, {"cmd": "reset"})
    elif "--force-poweroff" in given:
        error = ask(host, vm, {"cmd": "poweroff"})
    elif "--checkpoint" in given or "--suspend" in given:
        suspend = "--suspend" in given
        file = str(Path(given["--suspend" if suspend else "--checkpoint"]).absolute())
        error = ask(host, vm, {"cmd": "checkpoint", "file": file, "suspend": suspend})
    elif "--migrate" in given or "--migrate-live" in given:
        live = "--migrate-live" in given
        try:
            address, port = wire.parse_host_port(given["--migrate-live" if live else "--migrate"])
        except ValueError:
            print("bhyvectl: invalid migration address", file=sys.stderr)
            return 1
        error = ask(host, vm, {"cmd": "migrate", "host": address, "port": port, "live": live})
    if error is not None:
        print(f"bhyvectl: {error}", file=sys.stderr)
        return 1
    return 0
