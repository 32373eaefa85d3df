"""kldload(8) for a simulated host: `kldload [-nqv] NAME` loads NAME when boot/kernel/NAME.ko
exists under the simulated root (sbin/kldload/kldload.c: `-n` is no error when the module is
already loaded; otherwise "can't load NAME: module already loaded or in kernel", exit 1)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.bhyve_sim.host import SimHost


def main(argv: list[str], root: str) -> int:
    flags = [a for a in argv if a.startswith("-")]
    names = [a for a in argv if not a.startswith("-")]
    if len(names) != 1 or any(set(f[1:]) - set("nqv") for f in flags):
        print("usage: kldload [-nqv] file ...", file=sys.stderr)
        return 1
    host = SimHost(Path(root))
    name = names[0].removesuffix(".ko")
    loaded = host.config()["kld"]
    if name in loaded:
        if any("n" in f for f in flags):
            return 0
        print(f"kldload: can't load {name}: module already loaded or in kernel", file=sys.stderr)
        return 1
    if not (host.root / "boot" / "kernel" / f"{name}.ko").exists():
        print(f"kldload: can't load {name}: No such file or directory", file=sys.stderr)
        return 1
    host.configure(kld=[*loaded, name])
    return 0
