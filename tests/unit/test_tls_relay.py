"""The agents' TLS relay for QEMU's migration stream (hypervisors/qemu/tls_relay.py), on
loopback with certificates of a real cluster CA; plain unix sockets stand in for the two
QEMUs (the relay sees nothing else of them). Real QEMU through the relay:
tests/integration/test_migration*.py."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.cluster.pki import ClusterCA, PkiPaths, make_key_and_csr
from corral.hypervisors.base import VmLayout
from corral.hypervisors.qemu import tls_relay
from corral.hypervisors.tls_files import tls_dir_for
from corral.migration.receiver import free_port
from corral.waiting import wait_for

LOOPBACK = "127.0.0.1"


@dataclass
class FakeIncomingQemu:
    """What the incoming QEMU does with `migrate-incoming unix:...`: listen there, take each
    connection in turn, keep what arrives on each."""

    path: Path
    received: list[bytearray] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)  # connections whose sender closed
    replies: dict[int, bytes] = field(default_factory=dict)  # sent back after the EOF

    def __post_init__(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.listener.settimeout(10)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            index = len(self.received)
            self.received.append(bytearray())
            threading.Thread(target=self._take, args=(conn, index), daemon=True).start()

    def _take(self, conn: socket.socket, index: int) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received[index] += data
            except ConnectionResetError:  # cut, as QEMU would see a cancelled migration
                pass
            self.ended.append(index)
            with contextlib.suppress(OSError):
                conn.sendall(self.replies.get(index, b""))


@dataclass
class Pair:
    root: Path
    ca: ClusterCA

    def tls(self, name: str, endpoint: str, layout: VmLayout) -> Path:
        paths = PkiPaths(self.root / "pki" / name)
        if not paths.node_cert.exists():
            key, csr = make_key_and_csr(name)
            paths.save_node(self.ca.cert_pem, self.ca.sign(csr, name, LOOPBACK), key)
        return tls_dir_for(layout, endpoint, paths.ca_cert, paths.node_cert, paths.node_key)

    def layout(self, name: str) -> VmLayout:
        layout = VmLayout(self.root / name, self.root / f"{name}-checkpoints")
        layout.runtime_dir.mkdir(parents=True, exist_ok=True)
        return layout


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path, ClusterCA.create(PkiPaths(tmp_path / "ca"), "relay"))
    yield made
    for name in ("src", "dst"):
        tls_relay.stop(made.layout(name), force=True)


def relay_pair(
    pair: Pair,
    *,
    target_cert: str = "node2",
    expect: str = "node1",
    hostname: str = "node2",
) -> tuple[VmLayout, VmLayout, FakeIncomingQemu, str]:
    src, dst = pair.layout("src"), pair.layout("dst")
    port = free_port(LOOPBACK)
    uri = tls_relay.open_target(dst, LOOPBACK, port, pair.tls(target_cert, "server", dst), expect)
    assert uri == f"unix:{tls_relay.in_socket(dst)}"
    qemu = FakeIncomingQemu(tls_relay.in_socket(dst))
    out = tls_relay.open_source(src, LOOPBACK, port, pair.tls("node1", "client", src), hostname)
    return src, dst, qemu, out.removeprefix("unix:")


def send(path: str, data: bytes) -> bytes:
    """What the source QEMU does: connect, send everything, close its side, read the rest."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        back = bytearray()
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                back += chunk
        except (BrokenPipeError, ConnectionResetError):  # the relay closed it: refused
            pass
        return bytes(back)


def closed(s: socket.socket) -> bool:
    """The other end closed: an EOF, or a reset (it had unread data)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_the_stream_arrives_whole_and_the_return_path_drains(pair: Pair) -> None:
    src, _, qemu, path = relay_pair(pair)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # only root reaches QEMU's end
    data = os.urandom(3 * 1024 * 1024 + 17)  # many records, and a partial one
    qemu.replies[0] = b"SHUT"  # the target's last word on the return path, after the EOF
    assert send(path, data) == b"SHUT"
    wait_for(lambda: qemu.received[:1] == [data], timeout=10, what="the whole stream")
    assert tls_relay.error(src) == ""


def test_a_source_of_another_name_is_refused_before_a_byte_reaches_qemu(pair: Pair) -> None:
    src, dst, qemu, path = relay_pair(pair, expect="node3")  # waiting for node3's VM
    assert send(path, b"x" * 100_000) == b""
    wait_for(lambda: "refused" in tls_relay.error(dst), timeout=10, what="the refusal")
    assert "node1, not of node3" in tls_relay.error(dst)
    assert "refused this node's stream" in tls_relay.error(src)
    assert qemu.received == []  # the incoming QEMU never saw a connection
    tls_relay.stop(src, force=True)  # the failed migration seen: the reason stays to be read
    assert "refused this node's stream" in tls_relay.error(src)
    tls_relay.stop(src, force=True, forget=True)  # the VM's QEMU gone
    assert tls_relay.error(src) == ""


def test_a_target_presenting_another_name_is_refused(pair: Pair) -> None:
    src, _, qemu, path = relay_pair(pair, target_cert="node3", hostname="node2")
    assert send(path, b"secret pages") == b""
    wait_for(lambda: "node2" in tls_relay.error(src), timeout=10, what="the source's refusal")
    assert "certificate verify failed" in tls_relay.error(src)
    assert qemu.received == []


def test_stop_cuts_an_open_stream(pair: Pair) -> None:
    src, _, qemu, path = relay_pair(pair)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"first pages")
        wait_for(
            lambda: qemu.received[:1] == [b"first pages"],
            timeout=10,
            what="the first pages",
        )
        assert qemu.ended == []
        tls_relay.stop(src, force=True)  # the migration was cancelled
        assert closed(s)  # the source QEMU's end is closed
        wait_for(lambda: qemu.ended == [0], timeout=10, what="the target's end closed")


def test_stopping_leaves_no_socket_behind(pair: Pair) -> None:
    src, dst, qemu, path = relay_pair(pair)
    assert Path(path).exists()
    assert qemu.path.exists()  # the incoming QEMU's, which QEMU itself never removes
    tls_relay.stop(src, force=True)
    tls_relay.stop(dst, force=True)  # the target QEMU was killed
    assert not Path(path).exists()
    assert not qemu.path.exists()
