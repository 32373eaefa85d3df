"""The `etcd_endpoints` setting, checked where settings are read (no etcd client loaded)."""

from __future__ import annotations

from urllib.parse import urlsplit

from corral.errors import UserInputError


def parse_endpoints(text: str | list[str]) -> list[tuple[str, int]]:
    """`https://10.0.0.1:2379,https://10.0.0.2:2379` as (host, port) pairs.

    :raise UserInputError: an endpoint is not https://HOST:PORT.
    """
    items = text.split(",") if isinstance(text, str) else text
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise UserInputError(
                "etcd-endpoints", f"{item!r} is not https://HOST:PORT (TLS is required)"
            )
        try:
            port = parts.port or 2379
        except ValueError as exc:
            raise UserInputError("etcd-endpoints", f"{item!r}: {exc}") from exc
        out.append((parts.hostname, port))
    if not out:
        raise UserInputError("etcd-endpoints", "at least one https://HOST:PORT is needed")
    return out
