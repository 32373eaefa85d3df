"""The cluster CA signs node certificates that verify against it and against nothing else."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from corral.cluster.pki import ClusterCA, PkiPaths, fingerprint, make_key_and_csr
from corral.errors import ConflictError, NotFoundError, UserInputError
from tests.unit.member_apps import certificate, member_agent


def test_ca_signs_a_node_certificate_with_name_and_address(tmp_path: Path) -> None:
    paths = PkiPaths(tmp_path / "pki")
    ca = ClusterCA.create(paths, "lab")
    ca.issue_node(paths, "node1", "10.0.0.1")
    assert paths.member
    assert paths.holds_ca_key
    cert = x509.load_pem_x509_certificate(paths.node_cert.read_bytes())
    cert.verify_directly_issued_by(ca.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    paths = PkiPaths(tmp_path / "pki")
    ClusterCA.create(paths, "lab").issue_node(paths, "node1", "10.0.0.1")
    for key in (paths.ca_key, paths.node_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_certificate_of_another_ca_does_not_verify(tmp_path: Path) -> None:
    ours = ClusterCA.create(PkiPaths(tmp_path / "a"), "a")
    theirs = ClusterCA.create(PkiPaths(tmp_path / "b"), "b")
    _, csr = make_key_and_csr("intruder")
    cert = x509.load_pem_x509_certificate(theirs.sign(csr, "intruder", "10.0.0.9"))
    with pytest.raises((ValueError, TypeError)):
        cert.verify_directly_issued_by(ours.cert)
    assert ours.fingerprint != theirs.fingerprint


def test_second_init_is_refused(tmp_path: Path) -> None:
    paths = PkiPaths(tmp_path / "pki")
    ClusterCA.create(paths, "lab")
    with pytest.raises(ConflictError, match="already belongs"):
        ClusterCA.create(paths, "lab")


def test_loading_the_ca_where_its_key_is_not_says_where_to_go(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="cluster init"):
        ClusterCA.load(PkiPaths(tmp_path / "none"))


def test_malformed_csr_and_address_are_refused(tmp_path: Path) -> None:
    ca = ClusterCA.create(PkiPaths(tmp_path / "pki"), "lab")
    with pytest.raises(UserInputError) as info:
        ca.sign(b"not a csr", "n", "10.0.0.1")
    assert info.value.field == "csr"
    _, csr = make_key_and_csr("n")
    with pytest.raises(UserInputError) as info:
        ca.sign(csr, "n", "not-an-ip")
    assert info.value.field == "address"


def test_fingerprint_is_sha256_of_der(tmp_path: Path) -> None:
    ca = ClusterCA.create(PkiPaths(tmp_path / "pki"), "lab")
    assert len(fingerprint(ca.cert_pem)) == 64
    assert fingerprint(ca.cert_pem) == ca.fingerprint


def test_the_ca_holder_keeps_the_revocation_list_of_removed_members(tmp_path: Path) -> None:
    crl_file = tmp_path / "etcd" / "crl.der"
    agent = member_agent(tmp_path, crl_file=crl_file)
    try:
        assert list(x509.load_der_x509_crl(crl_file.read_bytes())) == []  # made with the CA
        der = certificate(agent, "peer", "127.0.0.2")
        serial = x509.load_der_x509_certificate(der).serial_number
        certificate(agent, "other", "127.0.0.3")
        agent.remove_node("peer", force=False)
        crl = x509.load_der_x509_crl(crl_file.read_bytes())
        assert [r.serial_number for r in crl] == [serial]  # the removed one only
        ca = ClusterCA.load(agent.pki)
        assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
        assert crl_file.stat().st_mode & 0o777 == 0o644
    finally:
        agent.close()


def test_a_serial_is_looked_up_by_fingerprint_only(tmp_path: Path) -> None:
    paths = PkiPaths(tmp_path / "pki")
    ca = ClusterCA.create(paths, "t")
    _, csr = make_key_and_csr("n")
    pem = ca.sign(csr, "n", "127.0.0.1")
    assert paths.serial_of(fingerprint(pem)) is None  # not recorded
    paths.record_issued(pem)
    assert paths.serial_of(fingerprint(pem)) == x509.load_pem_x509_certificate(pem).serial_number
    assert paths.serial_of("../ca") is None  # never a path
