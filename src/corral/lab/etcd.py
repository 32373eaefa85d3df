"""Real etcd members (Debian's etcd-server) for the lab's `--state etcd` and the tests: each
in its own network namespace on the migration network (or on loopback for a unit test),
with client and peer TLS from the cluster CA (`--client-cert-auth`: only holders of a
cluster certificate may read or write).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from corral import commands
from corral.cluster.pki import ClusterCA, PkiPaths, make_key_and_csr
from corral.commands import pid_alive
from corral.errors import EnvironmentProblem
from corral.lab import netns
from corral.lab.plan import LabPlan
from corral.waiting import wait_for

ETCD = Path("/usr/bin/etcd")


@dataclass(frozen=True)
class EtcdMember:
    name: str
    address: str
    folder: Path  # data, certificates, log and pid file
    netns: str | None = None  # None: the caller's namespace (loopback tests)
    client_port: int = 2379
    peer_port: int = 2380
    crl: Path | None = None  # the cluster's revocation list (--client-crl-file)

    @property
    def client_url(self) -> str:
        return f"https://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}:{self.peer_port}"

    @property
    def pid_file(self) -> Path:
        return self.folder / "etcd.pid"

    @property
    def log(self) -> Path:
        return self.folder / "etcd.log"


def issue_certificates(ca: ClusterCA, member: EtcdMember) -> None:
    """The member's key and certificate (its name and address), and the CA, in its folder."""
    member.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem, csr_pem = make_key_and_csr(member.name)
    (member.folder / "ca.pem").write_bytes(ca.cert_pem)
    (member.folder / "member.pem").write_bytes(ca.sign(csr_pem, member.name, member.address))
    key = member.folder / "member.key"
    key.write_bytes(key_pem)
    key.chmod(0o600)


def argv(member: EtcdMember, cluster: list[EtcdMember], token: str) -> list[str]:
    f = member.folder
    tls = ["--cert-file", "--key-file", "--trusted-ca-file"]
    files = [str(f / "member.pem"), str(f / "member.key"), str(f / "ca.pem")]
    return [
        str(ETCD),
        "--name",
        member.name,
        "--data-dir",
        str(f / "data"),
        "--listen-client-urls",
        member.client_url,
        "--advertise-client-urls",
        member.client_url,
        "--listen-peer-urls",
        member.peer_url,
        "--initial-advertise-peer-urls",
        member.peer_url,
        "--initial-cluster",
        ",".join(f"{m.name}={m.peer_url}" for m in cluster),
        "--initial-cluster-state",
        "new",  # ignored once the member has data: a restart rejoins
        "--initial-cluster-token",
        token,
        *(x for pair in zip(tls, files, strict=True) for x in pair),
        "--client-cert-auth",
        *(["--client-crl-file", str(member.crl)] if member.crl is not None else []),
        *(x for pair in zip(["--peer-" + t[2:] for t in tls], files, strict=True) for x in pair),
        "--peer-client-cert-auth",
        "--log-outputs",
        str(member.log),
        "--logger",
        "zap",
    ]


def start(member: EtcdMember, cluster: list[EtcdMember], token: str) -> int:
    """Start the member (its certificates must be issued); its PID. Does not wait."""
    if running(member):
        return int(member.pid_file.read_text())
    if not ETCD.exists():
        raise EnvironmentProblem(f"{ETCD} is missing: apt-get install etcd-server")
    command = argv(member, cluster, token)
    if member.netns is not None:
        command = netns.in_netns(member.netns, command)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(member.folder / "etcd.stderr").open("ab"),
        start_new_session=True,
    )
    member.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def running(member: EtcdMember) -> bool:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return pid_alive(int(member.pid_file.read_text()))
    return False


def stop(member: EtcdMember, sig: signal.Signals = signal.SIGKILL) -> None:
    """Stop the member this module started (its recorded PID), if it runs."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(member.pid_file.read_text())
        os.kill(pid, sig)
        with contextlib.suppress(Exception):
            os.waitpid(pid, 0)
        wait_for(lambda: not pid_alive(pid), timeout=10, what=f"etcd {member.name} to exit")
    member.pid_file.unlink(missing_ok=True)


def healthy(member: EtcdMember, cert: Path, key: Path) -> bool:
    """The member answers /health with a leader (a majority) behind it (asked from its own
    namespace: the lab's addresses exist only there)."""
    if member.netns is not None:
        probe = [
            sys.executable,
            "-I",
            "-c",
            _PROBE,
            member.client_url,
            str(member.folder),
            str(cert),
            str(key),
        ]
        return commands.succeeds(netns.in_netns(member.netns, probe))
    return _health(member.client_url, member.folder / "ca.pem", cert, key)


def _health(url: str, ca: Path, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2, context=ctx) as r:
            return b'"true"' in r.read()
    except OSError:
        return False


_PROBE = """
import ssl, sys, urllib.request
url, folder, cert, key = sys.argv[1:]
ctx = ssl.create_default_context(cafile=folder + "/ca.pem")
ctx.load_cert_chain(cert, key)
with urllib.request.urlopen(url + "/health", timeout=2, context=ctx) as r:
    sys.exit(0 if b'"true"' in r.read() else 1)
"""


def start_cluster(
    members: list[EtcdMember], ca: ClusterCA, token: str, timeout: float = 60.0
) -> None:
    """Issue certificates, start every member, wait until each reports a healthy cluster."""
    for member in members:
        if not (member.folder / "member.pem").exists():
            issue_certificates(ca, member)
    for member in members:
        start(member, members, token)
    for member in members:
        wait_for(
            functools.partial(
                healthy, member, member.folder / "member.pem", member.folder / "member.key"
            ),
            timeout=timeout,
            what=f"etcd member {member.name} to be healthy (log: {member.log})",
            interval=0.2,
        )


def lab_members(plan: LabPlan) -> list[EtcdMember]:
    """The lab's etcd members (`lab up --state etcd`), each in its namespace."""
    base = plan.config.root / "etcd"
    return [
        EtcdMember(f"etcd{i}", str(address.ip), base / f"etcd{i}", netns=ns, crl=plan.etcd_crl)
        for i, (ns, address) in enumerate(plan.etcd, start=1)
    ]


def start_lab(plan: LabPlan, timeout: float = 60.0) -> None:
    """Start the lab's etcd cluster with certificates from the cluster CA (held by node1's
    agent, so this runs once the cluster is made)."""
    first = plan.nodes[0]
    ca = ClusterCA.load(PkiPaths(first.local_dir / "state" / "pki"))
    start_cluster(lab_members(plan), ca, plan.config.prefix, timeout)
