"""The cluster CA and a node's certificate laid out for one migration endpoint, with the file
names QEMU's tls-creds-x509 expects (the bhyve driver's TLS tunnel reads the same layout).

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from corral.hypervisors.base import VmLayout
from corral.hypervisors.dh_params import ffdhe2048_pem


def tls_dir_for(layout: VmLayout, endpoint: str, ca: Path, cert: Path, key: Path) -> Path:
    """A private directory with ca-cert.pem, ENDPOINT-cert.pem and ENDPOINT-key.pem, where
    `endpoint` is "server" (the destination) or "client" (the source); a server's also
    holds dh-params.pem (RFC 7919's ffdhe2048), or QEMU 7.2 generates DH parameters at
    every incoming migration (dh_params.py)."""
    folder = layout.runtime_dir / f"tls-{endpoint}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    shutil.copyfile(ca, folder / "ca-cert.pem")
    shutil.copyfile(cert, folder / f"{endpoint}-cert.pem")
    shutil.copyfile(key, folder / f"{endpoint}-key.pem")
    (folder / f"{endpoint}-key.pem").chmod(0o600)
    if endpoint == "server":
        (folder / "dh-params.pem").write_text(ffdhe2048_pem())
    return folder
