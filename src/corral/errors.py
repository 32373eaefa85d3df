"""The error tree of corral. Every error a user can cause or meet is one of these; the CLI
turns them into a one-line message and an exit code, never a traceback.

::

    CorralError                  exit 1, base of everything below
    ├── UserInputError           exit 2, bad input: names the field and what was wrong
    ├── NotFoundError            exit 3, a named VM, node, task or checkpoint does not exist
    ├── ConflictError            exit 4, the request clashes with the current state
    ├── EnvironmentProblem       exit 5, this machine lacks something (root, a package, a file)
    ├── CommandFailed            exit 6, an external command (ip, qemu-img, ...) failed
    ├── HypervisorError          exit 7, the hypervisor refused or died
    └── WaitTimeout              exit 8, a condition did not hold before its deadline

Errors cross the HTTP API by name (`api_errors.py`): every subclass, wherever it is defined,
is recorded in `ERROR_TYPES` and rebuilt on the client's side with `from_wire`, so the CLI
exits with the code the agent's error has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

ERROR_TYPES: dict[str, type[CorralError]] = {}


class CorralError(Exception):
    """Base of every corral error. `exit_code` is what the CLI exits with; `details`, when
    set, is structured data for programs (the reasons of a refused migration, say)."""

    exit_code = 1
    details: object = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        ERROR_TYPES.setdefault(cls.__name__, cls)

    @classmethod
    def from_wire(cls, message: str, field: str | None) -> Self:
        """The error an agent reported as `message` (and `field`), rebuilt here."""
        error = cls.__new__(cls)
        CorralError.__init__(error, message)
        return error


class UserInputError(CorralError):
    """Bad input from a person or a program; `field` names what was wrong."""

    exit_code = 2

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    @classmethod
    def from_wire(cls, message: str, field: str | None) -> Self:
        name = field or "request"
        prefix = f"{name}: "
        return cls(name, message[len(prefix) :] if message.startswith(prefix) else message)


class NotFoundError(CorralError):
    """A named object does not exist."""

    exit_code = 3


class ConflictError(CorralError):
    """The request clashes with the current state (for example a lab that is already up)."""

    exit_code = 4


class EnvironmentProblem(CorralError):
    """This machine lacks something the operation needs."""

    exit_code = 5


class CommandFailed(CorralError):
    """An external command exited non-zero; carries the command and what it printed."""

    exit_code = 6

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        cmd = " ".join(argv)
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"command failed ({returncode}): {cmd}: {detail}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr

    @classmethod
    def from_wire(cls, message: str, field: str | None) -> Self:
        error = super().from_wire(message, field)
        error.argv, error.returncode, error.stderr = [], -1, ""
        return error


class HypervisorError(CorralError):
    """The hypervisor refused a request or died."""

    exit_code = 7


class WaitTimeout(CorralError):
    """A condition did not hold before its deadline."""

    exit_code = 8
