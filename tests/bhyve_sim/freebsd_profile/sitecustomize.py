"""The simulated FreeBSD host profile: loaded (PYTHONPATH) into every corral process of an
agent that runs the bhyve driver on a simulated FreeBSD host, it makes what FreeBSD lacks
unreachable and writes down each attempt.

A FreeBSD host has no procfs mounted by default and no /sys, and none of Linux's tools (ip,
ss, tc, findmnt, ...). With CORRAL_LINUX_CALLS set, a Python audit hook (PEP 578) refuses
  - opening or listing anything under /proc or /sys (FileNotFoundError, as on FreeBSD);
  - starting any program that is not under the simulated root (CORRAL_FREEBSD_ROOT) and is
    not this Python itself (corral's own helpers),
and appends one line per refusal to the file CORRAL_LINUX_CALLS names: `corral` when the
innermost frame is corral's own code (under CORRAL_SOURCE), `library` when it is Python's or a
third-party library's (their own probes, which must tolerate the absence as they do on
FreeBSD), then the frames. The test's verdict: no `corral` line.

The simulated tools (ifconfig, ps, mount, sysctl, bhyve, ...) start with `python -I` and so
never load this: they are the simulated kernel and may read Linux's /proc.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import traceback

_LOG = os.environ.get("CORRAL_LINUX_CALLS")
_ROOT = os.environ.get("CORRAL_FREEBSD_ROOT", "")
_SOURCE = os.environ.get("CORRAL_SOURCE", "/nonexistent/")
_FORBIDDEN = ("/proc", "/sys")
_STDLIB = sysconfig.get_paths()["stdlib"] + "/"
_PYTHONS = {sys.executable, os.path.realpath(sys.executable)}


def _stdlib(filename: str) -> bool:
    return filename.startswith(_STDLIB) and "-packages" not in filename


def _where() -> tuple[str, str]:
    """Whose call it is (corral or library) and its innermost frames."""
    frames = [f for f in traceback.extract_stack() if f.filename != __file__]
    frames = [f for f in frames if not f.filename.startswith("<")]  # import machinery
    if not frames:
        return "library", "?"
    # The innermost frame that is not Python's standard library decides: corral's code
    # reading /proc through pathlib is corral's call.
    owner = next((f for f in reversed(frames) if not _stdlib(f.filename)), None)
    kind = "corral" if owner is not None and owner.filename.startswith(_SOURCE) else "library"
    shown = [f"{os.path.basename(f.filename)}:{f.lineno}" for f in frames[-5:][::-1]]
    return kind, " <- ".join(shown)


def _refuse(what: str) -> None:
    if _LOG:
        kind, where = _where()
        with open(_LOG, "a") as log:  # not under /proc: no recursion
            log.write(f"{kind} {os.getpid()} {what} at {where}\n")
    raise FileNotFoundError(2, f"not on FreeBSD: {what}")


def _path_of(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _forbidden_path(value: object) -> bool:
    path = _path_of(value)
    if path is None:
        return False
    path = os.path.abspath(path)
    return any(path == p or path.startswith(p + "/") for p in _FORBIDDEN)


def _program(value: object) -> str | None:
    path = _path_of(value)
    if path is None and isinstance(value, (list, tuple)) and value:
        path = _path_of(value[0])
    return path


def _allowed_program(path: str) -> bool:
    if path in _PYTHONS or os.path.realpath(path) in _PYTHONS:
        return True
    return bool(_ROOT) and os.path.abspath(path).startswith(_ROOT.rstrip("/") + "/")


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event in ("open", "os.listdir", "os.scandir") and args and _forbidden_path(args[0]):
        _refuse(f"{event} {args[0]!r}")
    elif event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"):
        program = _program(args[0]) or (_program(args[1]) if len(args) > 1 else None)
        if program is not None and not _allowed_program(program):
            _refuse(f"{event} {program!r}")
    elif event == "os.system":
        _refuse(f"os.system {args[0]!r}")


if _LOG:
    sys.addaudithook(_hook)
