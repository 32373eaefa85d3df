"""Raw disk images: copied sparsely (holes stay holes), for checkpoints of bhyve VMs.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 1 << 20


def copy_sparse(source: Path, target: Path) -> None:
    """Copy `source` to `target` (replaced atomically), skipping blocks of zeros."""
    tmp = target.with_name(f".{target.name}.tmp")
    zero = bytes(BLOCK)
    with source.open("rb") as src, tmp.open("wb") as dst:
        while block := src.read(BLOCK):
            if block == zero[: len(block)]:
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
        dst.truncate(src.tell())
    os.replace(tmp, target)
