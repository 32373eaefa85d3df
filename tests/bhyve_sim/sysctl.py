"""sysctl(8) for a simulated host: `sysctl [-n] NAME...` from etc/bhyve-sim.json."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.bhyve_sim.host import SimHost


def main(argv: list[str], root: str) -> int:
    config = SimHost(Path(root)).config()
    values = {  # vmm.ko's sysctls exist only while it is loaded
        k: v
        for k, v in config["sysctl"].items()
        if "vmm" in config["kld"] or not k.startswith("hw.vmm.")
    }
    bare = bool(argv) and argv[0] == "-n"
    names = argv[1:] if bare else argv
    if not names or any(n.startswith("-") for n in names):
        print("usage: sysctl [-n] name ...", file=sys.stderr)
        return 1
    status = 0
    for name in names:
        if name not in values:
            print(f"sysctl: unknown oid '{name}'", file=sys.stderr)
            status = 1
            continue
        print(values[name] if bare else f"{name}: {values[name]}")
    return status
