"""Which host files a VM may use: a disk, kernel or initrd must lie inside the node's image
directories (`image_dirs`, by default the data directory) and never inside the agent's own
state (its database, the cluster's keys) or run directory. Paths are compared after every
symbolic link is resolved, so a link inside an image directory cannot point out of it.

Must never import: agent, cli, cluster, lab, migration, tasks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from corral.errors import UserInputError
from corral.model import BootSpec, VmSpec
from corral.vms.specs import VmRequest


def _named(disks: Sequence[Path | None], boot: BootSpec | None) -> list[tuple[str, Path]]:
    named = [(f"disks.{i}.path", path) for i, path in enumerate(disks) if path is not None]
    if boot is not None:
        named.append(("boot.kernel", boot.kernel))
        if boot.initrd is not None:
            named.append(("boot.initrd", boot.initrd))
    return named


def request_paths(request: VmRequest) -> list[tuple[str, Path]]:
    """(field, path) of every host file a VM request names (new disks name none)."""
    return _named([d.path for d in request.disks], request.boot)


def spec_paths(spec: VmSpec) -> list[tuple[str, Path]]:
    """(field, path) of every host file a resolved spec uses."""
    return _named([d.path for d in spec.disks], spec.boot)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_host_paths(
    named: Sequence[tuple[str, Path]], allowed: Sequence[Path], forbidden: Sequence[Path]
) -> None:
    """:raise UserInputError: a path lies outside every `allowed` directory or inside a
    `forbidden` one (the field named, and where it may lie instead)."""
    inside = [_real(p) for p in allowed]
    never = [_real(p) for p in forbidden]
    for field, path in named:
        real = _real(path)
        if any(real == d or real.is_relative_to(d) for d in never):
            raise UserInputError(field, f"{path} is inside the agent's own state; refused")
        if not any(real.is_relative_to(d) and real != d for d in inside):
            where = ", ".join(str(d) for d in allowed)
            raise UserInputError(
                field, f"{path} is outside the image directories ({where}; setting image_dirs)"
            )
