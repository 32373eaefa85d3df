"""RFC 7919's ffdhe2048 Diffie-Hellman group as a PKCS #3 PEM file, for QEMU's TLS server
credentials.

QEMU 7.2's `tls-creds-x509` with `endpoint=server` generates fresh 2048-bit DH parameters
when its directory has no `dh-params.pem` (`qcrypto_tls_creds_get_dh_params_file` in
crypto/tlscreds.c calls `gnutls_dh_params_generate2`): 90-350 ms measured here at every
incoming migration with TLS, before the target can listen. QEMU later stopped generating
them (it relies on GnuTLS's defaults). Giving it the standard, published ffdhe2048 group
costs nothing and is what GnuTLS itself offers (RFC 7919 groups are its known DH params).

The prime is computed from RFC 7919's definition (Appendix A.1), not copied:
p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1, generator 2.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import base64
import functools

GUARD_BITS = 64  # extra precision for the series of e


def floor_scaled_e(bits: int) -> int:
    """floor(2^bits * e), from e = sum 1/k! in integers with guard bits."""
    scale = 1 << (bits + GUARD_BITS)
    total, term, k = 0, scale, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> GUARD_BITS


@functools.cache
def ffdhe2048_prime() -> int:
    return 2**2048 - 2**1984 + (floor_scaled_e(1918) + 560316) * 2**64 - 1


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_integer(n: int) -> bytes:
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    return b"\x02" + _der_length(len(raw)) + raw


@functools.cache
def ffdhe2048_pem() -> str:
    """DHParameter ::= SEQUENCE { prime INTEGER, base INTEGER } (PKCS #3), PEM."""
    body = _der_integer(ffdhe2048_prime()) + _der_integer(2)
    der = b"\x30" + _der_length(len(body)) + body
    text = base64.b64encode(der).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join(["-----BEGIN DH PARAMETERS-----", *lines, "-----END DH PARAMETERS-----", ""])
