"""The process that runs one VM's bhyve, detached from the agent (like vmrun.sh or CBSD's
bhyve wrapper): bhyve exits 0 when its guest reboots, so the supervisor starts it again.

But bhyve also exits 0 after it sent its VM to another host (`bhyvectl --migrate`) or saved
and left (`--suspend`), and a wrapper that restarts on 0 then runs the VM twice: CBSD's does.
Here the driver leaves a marker before either (`departing`, `suspending`; it removes
`departing` once a failed migration has resumed the guest), and an exit 0 with a marker is
never taken for a reboot: during a migration the VM may already run on the target. Then the
VM is destroyed (`bhyvectl --destroy`) and the outcome written to exit.json.

Run as `python -m corral.hypervisors.bhyve.supervisor RUNTIME_DIR BHYVECTL NAME -- ARGV...`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from corral.hypervisors.bhyve.runtime import read_json

EXIT_REASONS = {0: "rebooted", 1: "powered off", 2: "halted", 3: "triple fault", 4: "error"}
DEPARTURE_WAIT = 60.0  # how long an exit 0 waits for the sender's verdict
FINAL = ("completed", "failed", "cancelled")


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)


def departed(runtime: Path) -> str | None:
    """Why the VM left for good, or None when an exit 0 was a guest reboot."""
    suspending = runtime / "suspending"
    if suspending.exists():
        state = Path(suspending.read_text().strip())
        if Path(f"{state}.meta").exists():
            return "suspended to a checkpoint"
    if (runtime / "departing").exists():
        # Never restarted: the VM may run on the target now. Recovery asks both nodes.
        deadline = time.monotonic() + DEPARTURE_WAIT
        while time.monotonic() < deadline:
            status = read_json(runtime / "send.json") or {}
            if status.get("state") == "completed":
                return "migrated away"
            if status.get("state") in FINAL:
                break
            time.sleep(0.05)
        return "exited during a migration (not restarted: it may run on the target)"
    return None


def without_state_source(argv: list[str]) -> list[str]:
    """A reboot boots afresh: not from the checkpoint or migration it first came from."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-r", "-R"):
            skip = True
        else:
            out.append(arg)
    return out


def supervise(runtime: Path, bhyvectl: str, name: str, argv: list[str]) -> dict[str, Any]:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def power_button(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # bhyve turns it into an ACPI power-off

    signal.signal(signal.SIGTERM, power_button)
    boots = 0
    while True:
        with (runtime / "hypervisor.log").open("ab") as log:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        (runtime / "vm.pid").write_text(f"{child.pid}\n")
        boots += 1
        code = child.wait()
        if code == 0 and not stopping:
            why = departed(runtime)
            if why is None:
                argv = without_state_source(argv)
                continue
            return {"code": 0, "reason": why, "boots": boots}
        return {"code": code, "reason": EXIT_REASONS.get(code, f"exit {code}"), "boots": boots}


def main(args: list[str]) -> int:
    runtime, bhyvectl, name = Path(args[0]), args[1], args[2]
    argv = args[4:] if args[3:4] == ["--"] else args[3:]
    (runtime / "exit.json").unlink(missing_ok=True)
    outcome = supervise(runtime, bhyvectl, name, argv)
    subprocess.run([bhyvectl, f"--vm={name}", "--destroy"], capture_output=True, check=False)
    write_json(runtime / "exit.json", {**outcome, "at": time.time()})
    (runtime / "vm.pid").unlink(missing_ok=True)
    (runtime / "supervisor.pid").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
