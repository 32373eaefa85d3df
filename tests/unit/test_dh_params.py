"""The DH group given to QEMU's TLS server credentials is RFC 7919's ffdhe2048, computed
from the RFC's definition: its known shape, and byte for byte what OpenSSL ships as that
group (when openssl is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from corral.hypervisors.base import VmLayout
from corral.hypervisors.dh_params import ffdhe2048_pem, ffdhe2048_prime, floor_scaled_e
from corral.hypervisors.tls_files import tls_dir_for


def test_the_prime_has_rfc_7919s_shape() -> None:
    p = ffdhe2048_prime()
    assert p.bit_length() == 2048
    assert p >> 1984 == 2**64 - 1  # the top 64 bits are ones
    assert p & (2**64 - 1) == 2**64 - 1  # and so are the bottom 64
    assert pow(2, p - 1, p) == 1  # a Fermat witness: consistent with a prime
    # A safe prime: q = (p - 1) / 2 passes the same test.
    q = (p - 1) // 2
    assert pow(3, q - 1, q) == 1


def test_e_is_computed_exactly_at_a_small_scale() -> None:
    assert floor_scaled_e(0) == 2
    assert floor_scaled_e(10) == 2783  # floor(1024 * e) = floor(2783.5...)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_pem_is_openssls_ffdhe2048_byte_for_byte() -> None:
    shipped = subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ffdhe2048_pem() == shipped


def test_a_server_tls_directory_carries_the_group_and_a_client_one_does_not(
    tmp_path: Path,
) -> None:
    for name in ("ca.pem", "node.pem", "node.key"):
        (tmp_path / name).write_text(name)
    layout = VmLayout(tmp_path / "run", tmp_path / "checkpoints")
    files = (tmp_path / "ca.pem", tmp_path / "node.pem", tmp_path / "node.key")
    server = tls_dir_for(layout, "server", *files)
    client = tls_dir_for(layout, "client", *files)
    assert (server / "dh-params.pem").read_text() == ffdhe2048_pem()
    assert not (client / "dh-params.pem").exists()
    assert (server / "server-key.pem").stat().st_mode & 0o777 == 0o600
