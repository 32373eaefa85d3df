"""The simulated FreeBSD profile refuses what FreeBSD has not, and writes it down: the lab's
verdict that corral reached no Linux-only call rests on this."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bhyve_sim import profile
from tests.bhyve_sim.host import install

PROBE = """
import os, subprocess
for attempt in (
    lambda: open("/proc/self/mountinfo").read(),
    lambda: os.listdir("/sys/class/net"),
    lambda: subprocess.run(["/usr/sbin/ip", "link"]),
):
    try:
        attempt()
        print("allowed")
    except FileNotFoundError:
        print("refused")
print(subprocess.run([os.environ["CORRAL_FREEBSD_ROOT"] + "/bin/ps", "-o", "state=", "-p",
                      str(os.getpid())], capture_output=True, text=True).stdout.strip())
"""


def test_proc_sys_and_linux_tools_are_refused_and_logged(tmp_path: Path) -> None:
    host = install(tmp_path / "freebsd")
    calls = tmp_path / "calls.log"
    env = profile.agent_env(host, calls)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["refused", "refused", "refused", "S"]  # S: it waits for ps
    assert profile.linux_calls(calls) == []  # the probe is not corral's code
    logged = profile.library_probes(calls)
    assert len(logged) == 3
    assert "/proc/self/mountinfo" in logged[0]
    assert "/sys/class/net" in logged[1]
    assert "/usr/sbin/ip" in logged[2]


def test_a_call_from_corral_code_is_corrals(tmp_path: Path) -> None:
    """corral's own code reading /proc (through pathlib) is logged as corral's call."""
    host = install(tmp_path / "freebsd")
    calls = tmp_path / "calls.log"
    code = (
        "from corral.hypervisors import host_info\n"
        "try:\n"
        "    host_info.memory_mib()\n"
        "except FileNotFoundError:\n"
        "    print('refused')\n"
    )
    env = profile.agent_env(host, calls)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "refused"
    [line] = profile.linux_calls(calls)
    assert "/proc/meminfo" in line
    assert "host_info.py" in line
