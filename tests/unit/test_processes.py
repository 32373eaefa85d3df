"""Stopping a hypervisor's helper process: the first signal when it obeys, SIGKILL when it
does not; the log tail used in error messages."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from corral.commands import pid_alive
from corral.hypervisors.processes import log_tail, terminate


def _child(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # its signal handlers are in place
    return proc


def test_a_process_that_obeys_goes_on_the_first_signal() -> None:
    proc = _child("import time; print('ready', flush=True); time.sleep(60)")
    assert terminate(proc.pid, timeout=5) is True
    assert proc.wait(timeout=5) == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed() -> None:
    proc = _child(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)"
    )
    assert terminate(proc.pid, timeout=0.3) is False
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not pid_alive(proc.pid)


def test_a_process_already_gone_is_not_an_error() -> None:
    proc = _child("print('ready', flush=True)")
    proc.wait(timeout=5)
    assert terminate(proc.pid) is True


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    assert log_tail(log) == ""
    log.write_text("x" * 1000 + "the reason\n")
    assert log_tail(log, size=20).endswith("the reason")
    assert len(log_tail(log, size=20)) <= 20
