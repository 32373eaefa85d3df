"""Errors keep their meaning across HTTP: the agent's error comes back as the same class
with the same exit code (the documented 6, 7, 8 too), and a class the client does not know
still brings its exit code."""

from __future__ import annotations

import httpx
import pytest

from corral import errors
from corral.api_errors import AccessDenied, RemoteError, error_body, raise_for_response, status_for
from corral.cluster.tokens import JoinRefused

CASES = [
    errors.UserInputError("disks.0.path", "must be absolute"),
    errors.NotFoundError("no VM 'x'"),
    errors.ConflictError("VM x is migrating"),
    errors.EnvironmentProblem("no space left"),
    errors.CommandFailed(["qemu-img", "create"], 1, "boom"),
    errors.HypervisorError("QEMU died"),
    errors.WaitTimeout("the guest did not boot"),
    AccessDenied("not a member"),
    JoinRefused("join token refused: expired"),
]


def over_http(exc: errors.CorralError) -> errors.CorralError:
    response = httpx.Response(status_for(exc), json=error_body(exc))
    with pytest.raises(errors.CorralError) as raised:
        raise_for_response(response)
    return raised.value


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_an_error_comes_back_as_its_own_class_and_exit_code(exc: errors.CorralError) -> None:
    back = over_http(exc)
    assert type(back) is type(exc)
    assert back.exit_code == exc.exit_code
    assert back.message == exc.message
    assert status_for(exc) < 500 or exc.exit_code in (5, 6, 7, 8)


def test_the_field_of_bad_input_survives() -> None:
    back = over_http(errors.UserInputError("disks.0.path", "must be absolute"))
    assert isinstance(back, errors.UserInputError)
    assert (back.field, back.problem) == ("disks.0.path", "must be absolute")


def test_an_error_class_the_client_lacks_keeps_its_exit_code() -> None:
    body = {"error": {"type": "SomethingNew", "message": "m", "field": None, "exit_code": 14}}
    with pytest.raises(RemoteError) as raised:
        raise_for_response(httpx.Response(500, json=body))
    assert raised.value.exit_code == 14


def test_a_body_that_is_not_ours_is_still_an_error() -> None:
    with pytest.raises(errors.NotFoundError):
        raise_for_response(httpx.Response(404, text="<html>not found</html>"))
    with pytest.raises(errors.UserInputError):
        raise_for_response(httpx.Response(422, json={"detail": "bad"}))
