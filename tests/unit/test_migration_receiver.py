"""The destination re-checks, before it starts anything, that its VM directories still carry
the storage identities the source compared at preflight."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConflictError
from corral.migration.receiver import check_storage
from corral.storage.identity import IDENTITY_FILE
from corral.vms.directories import NodeDirectories


@pytest.fixture
def dirs(tmp_path: Path) -> NodeDirectories:
    d = NodeDirectories(
        tmp_path / "data", tmp_path / "config", tmp_path / "system", tmp_path / "run"
    )
    d.ensure("node2")
    return d


def test_unchanged_storage_passes(dirs: NodeDirectories) -> None:
    ids = {role: info["id"] for role, info in dirs.describe().items()}
    check_storage(dirs, ids)
    check_storage(dirs, {})  # an older source that sent none


def test_a_directory_whose_identity_changed_is_named(dirs: NodeDirectories) -> None:
    ids = {role: info["id"] for role, info in dirs.describe().items()}
    (dirs.system / IDENTITY_FILE).unlink()
    dirs.ensure("node2")  # another storage mounted there: a new identity
    with pytest.raises(ConflictError, match=r"the system directory .* changed since preflight"):
        check_storage(dirs, ids)
