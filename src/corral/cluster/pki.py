"""The cluster's certificate authority and the nodes' certificates (cryptography, EC P-256).

Files of a node's PKI directory (`STATE/pki`)::

    ca.pem      the cluster CA certificate (every node)
    ca.key      the CA's private key (only the node that ran `cluster init`), mode 0600
    node.pem    this node's certificate, signed by the CA, SAN = node name + address
    node.key    this node's private key, mode 0600; it never leaves the node
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.errors import ConflictError, NotFoundError, UserInputError

CA_YEARS = 10
NODE_YEARS = 2
CRL_YEARS = 10


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of a certificate's DER encoding, as 64 hex digits."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def der_fingerprint(cert_der: bytes) -> str:
    """SHA-256 of a certificate given as DER (as a TLS peer presents it), 64 hex digits."""
    return hashlib.sha256(cert_der).hexdigest()


def make_key_and_csr(node_name: str) -> tuple[bytes, bytes]:
    """A new private key and a certificate signing request for `node_name` (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


_CLIENT_CONTEXTS: dict[tuple[str, tuple[int, ...]], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class PkiPaths:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def node_cert(self) -> Path:
        return self.folder / "node.pem"

    @property
    def node_key(self) -> Path:
        return self.folder / "node.key"

    @property
    def member(self) -> bool:
        """True once this node has a certificate of a cluster."""
        return self.ca_cert.exists() and self.node_cert.exists() and self.node_key.exists()

    @property
    def holds_ca_key(self) -> bool:
        return self.ca_key.exists()

    @property
    def issued_dir(self) -> Path:
        """The CA holder's copy of every certificate it signed, by fingerprint (for the
        revocation list: it names serial numbers)."""
        return self.folder / "issued"

    def record_issued(self, cert_pem: bytes) -> None:
        self.issued_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.issued_dir / f"{fingerprint(cert_pem)}.pem").write_bytes(cert_pem)

    def serial_of(self, cert_fingerprint: str) -> int | None:
        """The serial number of a certificate this CA holder signed (None: not recorded;
        signed before certificates were kept, or by another holder)."""
        if not all(c in "0123456789abcdef" for c in cert_fingerprint):
            return None  # never a path
        path = self.issued_dir / f"{cert_fingerprint}.pem"
        if not path.is_file():
            return None
        return int(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)

    @property
    def node_fingerprint(self) -> str:
        return fingerprint(self.node_cert.read_bytes())

    def save_node(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_cert.write_bytes(ca_pem)
        _write_private(self.node_key, key_pem)
        self.node_cert.write_bytes(cert_pem)

    def server_context(self) -> ssl.SSLContext:
        """TLS server side that requires a client certificate signed by the cluster CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(self.node_cert), str(self.node_key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def join_server_context(self) -> ssl.SSLContext:
        """TLS server side for the join endpoint: no client certificate (the joiner has none
        yet; its token authenticates it)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.node_cert), str(self.node_key))
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """TLS client side: verifies the peer against the cluster CA, presents our cert.
        Built once per set of files (loading them costs more than a request to a peer)."""
        stamp = tuple(p.stat().st_mtime_ns for p in (self.ca_cert, self.node_cert, self.node_key))
        key = (str(self.folder), stamp)
        with _CONTEXTS_LOCK:
            ctx = _CLIENT_CONTEXTS.get(key)
            if ctx is None:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
                ctx.load_cert_chain(str(self.node_cert), str(self.node_key))
                _CLIENT_CONTEXTS.clear()  # only the newest files matter
                _CLIENT_CONTEXTS[key] = ctx
        return ctx


class ClusterCA:
    """The CA that signs every node's certificate."""

    def __init__(self, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert_pem = cert_pem
        self.cert = x509.load_pem_x509_certificate(cert_pem)
        self.key = key

    @classmethod
    def create(cls, paths: PkiPaths, cluster_name: str) -> ClusterCA:
        """Make a new CA in `paths`.

        :raise ConflictError: this node already has a CA or belongs to a cluster.
        """
        if paths.ca_cert.exists():
            raise ConflictError("this node already belongs to a cluster")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"corral CA {cluster_name}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        paths.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write_private(paths.ca_key, _key_pem(key))
        paths.ca_cert.write_bytes(cert_pem)
        return cls(cert_pem, key)

    @classmethod
    def load(cls, paths: PkiPaths) -> ClusterCA:
        """:raise NotFoundError: this node does not hold the CA's key."""
        if not paths.holds_ca_key:
            raise NotFoundError(
                "this node does not hold the cluster CA's key; run this on the"
                " node that ran 'corral cluster init'"
            )
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(paths.ca_cert.read_bytes(), key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    def sign(self, csr_pem: bytes, node_name: str, address: str) -> bytes:
        """A node certificate for `csr_pem`, valid for `node_name` and `address`.

        :raise UserInputError: the CSR or the address is malformed.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise UserInputError("csr", f"not a PEM certificate request ({exc})") from exc
        if not csr.is_signature_valid:
            raise UserInputError("csr", "its signature does not verify")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise UserInputError("address", f"{address!r} is not an IP address") from exc
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=365 * NODE_YEARS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(node_name), x509.IPAddress(ip)]),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def revocation_list(self, serials: Iterable[int]) -> bytes:
        """The cluster's certificate revocation list (DER), signed by the CA: what etcd's
        `--client-crl-file` reads at every new connection. Valid for CRL_YEARS (etcd does
        not check it; a tool that does must not find it stale between removals)."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=365 * CRL_YEARS))
        )
        for serial in sorted(set(serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=5))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.DER)

    def issue_node(self, paths: PkiPaths, node_name: str, address: str) -> None:
        """Give the CA's own node its certificate."""
        key_pem, csr_pem = make_key_and_csr(node_name)
        paths.save_node(self.cert_pem, self.sign(csr_pem, node_name, address), key_pem)
