"""How errors cross the HTTP API: each corral error has a status code and a JSON body
`{"error": {"type", "message", "field"}}`; clients turn the body back into the same error.

Must never import any layer of corral; errors only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from corral import errors

if TYPE_CHECKING:  # the CLI never loads httpx: it speaks to its socket with http.client
    import httpx

STATUS_BY_TYPE: dict[type[errors.CorralError], int] = {
    errors.UserInputError: 422,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.EnvironmentProblem: 503,
    errors.CommandFailed: 502,
    errors.HypervisorError: 502,
    errors.WaitTimeout: 504,
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
            "exit_code": exc.exit_code,
        }
    }


def raise_for_response(response: httpx.Response) -> None:
    """:raise CorralError: of the type the agent reported, when the response is an error."""
    raise_for_answer(response.status_code, response.content, response.reason_phrase)


def raise_for_answer(status: int, body: bytes, reason: str = "") -> None:
    """:raise CorralError: of the type the agent reported (the same class when this process
    knows it, else `RemoteError` with the agent's exit code), when `status` is an error.
    """
    if 200 <= status < 300:
        return
    info: Any = {}
    try:
        info = json.loads(body)["error"]
        message, kind, field = str(info["message"]), str(info["type"]), info.get("field")
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace")[:300]
        message, kind, field = text or reason, "", None
    details = info.get("details") if isinstance(info, dict) else None
    exit_code = info.get("exit_code") if isinstance(info, dict) else None
    if status == 422 and kind not in errors.ERROR_TYPES:
        kind = "UserInputError"  # FastAPI's own validation answers
    known = errors.ERROR_TYPES.get(kind)
    error: errors.CorralError
    if known is not None:
        error = known.from_wire(message, None if field is None else str(field))
    elif status == 404:
        error = errors.NotFoundError(message)
    elif status == 409:
        error = errors.ConflictError(message)
    elif status == 403:
        error = AccessDenied(message)
    elif status == 503:
        error = errors.EnvironmentProblem(message)
    else:
        error = RemoteError(f"agent error {status}: {message}")
    if isinstance(exit_code, int) and not isinstance(exit_code, bool):
        error.exit_code = exit_code  # the agent's word, for a type this process lacks
    error.details = details
    raise error
