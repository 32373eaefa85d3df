"""kldstat(8) for a simulated host: `kldstat -q -m MODULE` exits 0 when it is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.bhyve_sim.host import SimHost


def main(argv: list[str], root: str) -> int:
    if len(argv) != 3 or argv[:2] != ["-q", "-m"]:
        print(
            "usage: kldstat [-dhqv] [-i id] [-n filename]\n       kldstat [-dq] [-m modname]",
            file=sys.stderr,
        )
        return 1
    return 0 if argv[2] in SimHost(Path(root)).config()["kld"] else 1
