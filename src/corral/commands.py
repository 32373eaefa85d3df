"""Running external programs (ip, qemu-img, apt-get, ...) with one error type.

Must never import anything else of corral but errors and hostos.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from corral import hostos
from corral.errors import CommandFailed, EnvironmentProblem


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = 120.0,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capture its output as text, and return the finished process.

    :raise EnvironmentProblem: the program is not installed.
    :raise CommandFailed: it exited non-zero and `check` is true.
    """
    if shutil.which(argv[0]) is None:
        raise EnvironmentProblem(f"{argv[0]} is not installed (run 'make deps' as root)")
    proc = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc


def succeeds(argv: Sequence[str]) -> bool:
    """True when `argv` exits 0 (output discarded)."""
    return run(argv, check=False).returncode == 0


def pid_alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie (kill(pid, 0) succeeds on zombies, and PID 1
    on these machines does not reap orphans). Linux: /proc/PID/stat; FreeBSD: kill(pid, 0),
    then ps(1)'s state, as FreeBSD has no procfs by default."""
    if hostos.on_freebsd():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        out = run([hostos.tool("bin/ps"), "-o", "state=", "-p", str(pid)], check=False)
        return out.returncode == 0 and not out.stdout.strip().startswith("Z")
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
