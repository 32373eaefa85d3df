"""ps(1) for a simulated host, the calls corral makes (bin/ps/ps.c, keyword.c):
`ps [-ww] -o KEYWORD= -p PID` with KEYWORD `state` (alias of `stat`) or `command`
(alias `args`). FreeBSD's ps reads the process table with kvm_getprocs (sysctl
kern.proc); the simulated kernel is Linux, read here from /proc. A process that is not
there prints nothing and exits 1, as ps does when nothing matched. A zombie's command is
`<defunct>`; states are FreeBSD's letters (Linux's `t`, traced, is shown as `T`)."""

from __future__ import annotations

import getopt
import sys
from pathlib import Path

KEYWORDS = {"state": "state", "stat": "state", "command": "command", "args": "command"}


def main(argv: list[str], root: str) -> int:
    try:
        opts, rest = getopt.getopt(argv, "wo:p:")
    except getopt.GetoptError as exc:
        print(f"ps: illegal option -- {exc.opt}", file=sys.stderr)
        return 1
    fields = [v.rstrip("=") for o, v in opts if o == "-o"]
    pids = [v for o, v in opts if o == "-p"]
    if rest or len(fields) != 1 or fields[0] not in KEYWORDS or len(pids) != 1:
        print("usage: ps [-ww] -o keyword= -p pid (the simulated ps)", file=sys.stderr)
        return 1
    pid = pids[0]
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return 1
    state = stat.rsplit(")", 1)[1].split()[0].replace("t", "T")
    if KEYWORDS[fields[0]] == "state":
        print(state)
    else:
        print("<defunct>" if state == "Z" else args.replace(b"\0", b" ").decode().strip())
    return 0
