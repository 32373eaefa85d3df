"""The error tree of corral. Every error a user can cause or meet is one of these; the CLI
turns them into a one-line message and an exit code, never a traceback.

::

    CorralError                  exit 1, base of everything below
    ├── UserInputError           exit 2, bad input: names the field and what was wrong
    ├── NotFoundError            exit 3, a named VM, node, task or checkpoint does not exist
    ├── ConflictError            exit 4, the request clashes with the current state
    ├── EnvironmentProblem       exit 5, this machine lacks something (root, a package, a file)
    ├── CommandFailed            exit 6, an external command (ip, qemu-img, ...) failed
    └── HypervisorError          exit 7, the hypervisor refused or died
"""

from __future__ import annotations

from collections.abc import Sequence


class CorralError(Exception):
    """Base of every corral error. `exit_code` is what the CLI exits with; `details`, when
    set, is structured data for programs (the reasons of a refused migration, say)."""

    exit_code = 1
    details: object = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserInputError(CorralError):
    """Bad input from a person or a program; `field` names what was wrong."""

    exit_code = 2

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


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


class HypervisorError(CorralError):
    """The hypervisor refused a request or died."""

    exit_code = 7
