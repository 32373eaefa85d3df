"""`corral dashboard`: the web page of the cluster (corral/dashboard/), served on this
machine and talking to the local agent."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from corral.cli.connection import agent_client
from corral.cli.output import console
from corral.errors import UserInputError

DEFAULT_LISTEN = "127.0.0.1:8710"
PKI = Path("/var/lib/corral/pki")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, an IP address and a port.

    :raise UserInputError: naming what is wrong."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise UserInputError("--listen", f"{text!r}: HOST must be an IP address") from exc
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError("--listen", f"{text!r}: PORT must be 1 to 65535")
    return host, int(port)


def read_password(path: Path | None, loopback: bool) -> str | None:
    """:raise UserInputError: off loopback without a password file, or an empty one."""
    if path is None:
        if not loopback:
            raise UserInputError(
                "--password-file", "a dashboard off loopback needs a password (and serves HTTPS)"
            )
        return None
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise UserInputError("--password-file", f"{path}: {exc.strerror}") from exc
    if not password:
        raise UserInputError("--password-file", f"{path} is empty")
    return password


def dashboard_command(
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve on; off loopback it needs a password.")
    ] = DEFAULT_LISTEN,
    password_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the password (HTTP Basic, any user name)."),
    ] = None,
    pki: Annotated[
        Path, typer.Option(help="The node's certificates, for HTTPS off loopback.")
    ] = PKI,
) -> None:
    """Serve the cluster's web page: nodes, VMs with start, stop, migrate (after its plan)
    and drain, every migration live, and the task log of every node. It talks to the local
    agent, so run it as root on any member."""
    import uvicorn

    from corral.dashboard.app import dashboard_app

    host, port = parse_listen(listen)
    loopback = ipaddress.ip_address(host).is_loopback
    password = read_password(password_file, loopback)
    tls: dict[str, str] = {}
    if not loopback:
        cert, key = pki / "node.pem", pki / "node.key"
        if not cert.exists() or not key.exists():
            raise UserInputError("--pki", f"no node certificate in {pki}: join a cluster first")
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    app = dashboard_app(agent_client, password)
    scheme = "https" if tls else "http"
    console.print(f"corral dashboard on {scheme}://{listen} (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning", **tls)  # type: ignore[arg-type]
