"""The tunnel that carries bhyve's migration stream, plain TCP with no authentication,
between two agents over TLS with the cluster CA (both ends present node certificates and
verify the other's).

- `receive` (destination): listens on the migration address, accepts one connection (TLS
  server, client certificate required) and relays it to the destination bhyve, which
  listens on 127.0.0.1 only, where nothing but this tunnel reaches it.
- `send` (source): listens on 127.0.0.1, connects to the destination (TLS client, the
  destination's certificate checked against its address), runs `bhyvectl --migrate` at the
  local end, relays with an optional bandwidth limit, and records bhyvectl's verdict.

Without `--tls-dir` the tunnel relays plain TCP (`corral migrate --insecure`). Either side
writes its progress to a status file (state, bytes each way, times, error) for the driver.

Run as `python -m corral.hypervisors.bhyve.relay receive|send ...` (see `--help`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from corral.hypervisors.bhyve.announce import Nic, announce
from corral.hypervisors.tls_sockets import peer_common_name, tls_context

CHUNK = 256 * 1024


class Status:
    """The status file, rewritten atomically a few times a second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "state": "setup",
            "bytes_out": 0,
            "bytes_in": 0,
            "started": time.time(),
            "finished": None,
            "error": "",
        }
        self.lock = threading.Lock()
        self.write()

    def update(self, **changes: Any) -> None:
        with self.lock:
            self.data.update(changes)
        self.write()

    def add(self, key: str, count: int) -> None:
        with self.lock:
            self.data[key] += count

    def write(self) -> None:
        with self.lock:
            text = json.dumps(self.data)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text)
        tmp.rename(self.path)

    def keep_writing(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            self.write()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def pump(
    src: socket.socket,
    dst: socket.socket,
    status: Status,
    key: str,
    bandwidth: int,
    done: threading.Event,
) -> None:
    """Copy src to dst until either ends; at most `bandwidth` bytes/s when > 0."""
    started, sent = time.monotonic(), 0
    try:
        while not done.is_set():
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
            sent += len(data)
            status.add(key, len(data))
            if bandwidth > 0:
                ahead = sent / bandwidth - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    except OSError:
        pass
    finally:
        done.set()


def relay(a: socket.socket, b: socket.socket, status: Status, bandwidth: int) -> None:
    """Both directions until one side closes; then both are closed."""
    done = threading.Event()
    threads = [
        threading.Thread(target=pump, args=(a, b, status, "bytes_out", bandwidth, done)),
        threading.Thread(target=pump, args=(b, a, status, "bytes_in", 0, done)),
    ]
    for t in threads:
        t.start()
    done.wait()
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
    for t in threads:
        t.join()


HANDSHAKE_TIMEOUT = 10.0  # seconds a connecting peer has to finish the TLS handshake


def receive(args: argparse.Namespace, status: Status) -> int:
    """Destination: one connection from the source's tunnel, relayed to the local bhyve."""
    listener = socket.create_server(address(args.listen))
    ctx = tls_context(Path(args.tls_dir), "server") if args.tls_dir else None
    status.update(state="listening")
    listener.settimeout(args.timeout)
    while True:
        try:
            raw, peer = listener.accept()
        except TimeoutError:
            status.update(state="failed", error="no source connected", finished=time.time())
            return 1
        try:
            # A peer that connects and says nothing must not hold the only listener.
            raw.settimeout(HANDSHAKE_TIMEOUT)
            conn = ctx.wrap_socket(raw, server_side=True) if ctx else raw
            conn.settimeout(None)
        except (ssl.SSLError, OSError) as exc:  # not a cluster member: refused, wait on
            raw.close()
            status.update(error=f"refused {peer[0]}: {exc}")
            continue
        name = peer_common_name(conn) if isinstance(conn, ssl.SSLSocket) else None
        if args.peer_name and name != args.peer_name:
            conn.close()  # a member, but not the source of this migration
            status.update(error=f"refused {peer[0]}: certificate of {name}, not {args.peer_name}")
            continue
        break
    listener.close()
    status.update(state="active", error="", peer=peer[0])
    inner = socket.create_connection(address(args.to), timeout=30)
    relay(conn, inner, status, 0)
    status.update(state="completed", finished=time.time())
    if args.announce:  # the guest runs here now: tell the switches (announce.py)
        nics = [Nic.from_arg(a) for a in args.announce]
        failed = announce(nics)
        status.update(announced=[n.mac for n in nics], announce_errors=failed)
    return 0


def send(args: argparse.Namespace, status: Status) -> int:
    """Source: run bhyvectl against the local end and relay its stream to the destination."""
    local = socket.create_server(("127.0.0.1", 0))
    port = local.getsockname()[1]
    host, remote_port = address(args.to)
    try:
        raw = socket.create_connection((host, remote_port), timeout=30)
        if args.tls_dir:
            ctx = tls_context(Path(args.tls_dir), "client")
            out: socket.socket = ctx.wrap_socket(raw, server_hostname=args.hostname or host)
        else:
            out = raw
    except (OSError, ssl.SSLError) as exc:
        status.update(state="failed", error=f"tunnel to {args.to}: {exc}", finished=time.time())
        return 1
    argv = [a.replace("{port}", str(port)) for a in args.command]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def cancel(*_: object) -> None:
        proc.kill()
        status.update(state="cancelled", error="cancelled", finished=time.time())
        sys.exit(1)

    signal.signal(signal.SIGTERM, cancel)
    status.update(state="active", pid=proc.pid)
    local.settimeout(1.0)
    conn: socket.socket | None = None
    while conn is None and proc.poll() is None:
        try:
            conn, _ = local.accept()
        except TimeoutError:
            continue
    local.close()
    if conn is not None:
        relay(conn, out, status, args.bandwidth)
    else:
        out.close()
    output, _ = proc.communicate()
    if proc.returncode == 0:
        status.update(state="completed", finished=time.time())
        return 0
    status.update(state="failed", error=output.strip()[-400:], finished=time.time())
    return 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="corral-bhyve-relay", description=__doc__)
    parser.add_argument("mode", choices=("receive", "send"))
    parser.add_argument("--status", required=True, help="the status file to keep current")
    parser.add_argument("--listen", help="receive: ADDRESS:PORT to listen on")
    parser.add_argument("--to", required=True, help="where to relay to, ADDRESS:PORT")
    parser.add_argument("--tls-dir", help="ca-cert.pem and ENDPOINT-cert/key.pem (no: plain)")
    parser.add_argument("--hostname", help="send: the name the destination's certificate has")
    parser.add_argument("--peer-name", help="receive: accept only this node's certificate (CN)")
    parser.add_argument("--bandwidth", type=int, default=0, help="send: bytes/s (0: no limit)")
    parser.add_argument("--timeout", type=float, default=300.0, help="receive: wait this long")
    parser.add_argument(
        "--announce",
        action="append",
        default=[],
        help="receive: DEVICE,BRIDGE,MAC of a NIC to announce (RARP) once the VM runs here",
    )
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]  # send: after "--", bhyvectl ... with {port}
    status = Status(Path(args.status))
    stop = threading.Event()
    threading.Thread(target=status.keep_writing, args=(stop,), daemon=True).start()
    try:
        return receive(args, status) if args.mode == "receive" else send(args, status)
    except Exception as exc:  # the driver reads the reason from the status file
        status.update(state="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
        return 1
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
