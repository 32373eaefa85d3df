"""How errors cross the HTTP API: each corral error has a status code and a JSON body
`{"error": {"type", "message", "field"}}`; clients turn the body back into the same error.

Must never import any layer of corral; errors only.
"""

from __future__ import annotations

from typing import Any

import httpx

from corral import errors

STATUS_BY_TYPE: dict[type[errors.CorralError], int] = {
    errors.UserInputError: 422,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.EnvironmentProblem: 503,
    errors.CommandFailed: 502,
    errors.HypervisorError: 502,
}


class RemoteError(errors.CorralError):
    """An agent answered with an error this client has no closer type for."""


class Unreachable(errors.CorralError):
    """No agent answered at the address or socket tried."""

    exit_code = 10


class AccessDenied(errors.CorralError):
    """The agent refused who we are (certificate, token)."""

    exit_code = 9


def status_for(exc: errors.CorralError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS_BY_TYPE:
            return STATUS_BY_TYPE[kind]
    return 403 if exc.exit_code == 9 else 500


def error_body(exc: errors.CorralError) -> dict[str, Any]:
    return {
        "error": {
            "type": type(exc).__name__,
            "message": exc.message,
            "field": getattr(exc, "field", None),
            "details": exc.details,
        }
    }


def raise_for_response(response: httpx.Response) -> None:
    """:raise CorralError: of the type the agent reported, when the response is an error."""
    if response.is_success:
        return
    info: Any = {}
    try:
        info = response.json()["error"]
        message, kind, field = str(info["message"]), str(info["type"]), info.get("field")
    except (ValueError, KeyError, TypeError):
        message, kind, field = response.text[:300] or response.reason_phrase, "", None
    if kind == "UserInputError" or response.status_code == 422:
        problem = message.split(": ", 1)[1] if field and ": " in message else message
        raise errors.UserInputError(str(field or "request"), problem)
    details = info.get("details") if isinstance(info, dict) else None
    if kind == "Unreachable":
        raise Unreachable(message)
    if response.status_code == 404:
        raise errors.NotFoundError(message)
    if response.status_code == 409:
        conflict = errors.ConflictError(message)
        conflict.details = details
        raise conflict
    if response.status_code == 403:
        raise AccessDenied(message)
    if response.status_code == 503:
        raise errors.EnvironmentProblem(message)
    raise RemoteError(f"agent error {response.status_code}: {message}")
