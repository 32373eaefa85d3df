"""Storage identity files (CBSD's `dir.id`): each of a node's data, config and system
directories carries `.corral-storage-id`, written once. Two nodes that read the same identity
from a directory see the same storage; the migration's shared-storage check compares them.

The file is created with O_EXCL, so two nodes starting at once on a shared directory agree
on one identity instead of overwriting each other's.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from corral.errors import EnvironmentProblem
from corral.storage.filesystem import mount_of

IDENTITY_FILE = ".corral-storage-id"


@dataclass(frozen=True)
class StorageIdentity:
    id: str
    created_at: float
    created_by: str
    role: str

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "role": self.role,
        }


def read_identity(directory: Path) -> StorageIdentity | None:
    """The identity recorded in `directory`, or None when it has none (yet)."""
    try:
        data = json.loads((directory / IDENTITY_FILE).read_text())
        return StorageIdentity(
            str(data["id"]), float(data["created_at"]), str(data["created_by"]), str(data["role"])
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvironmentProblem(f"{directory / IDENTITY_FILE} is damaged: {exc}") from exc


def ensure_identity(directory: Path, role: str, node: str) -> StorageIdentity:
    """The directory's identity, created (once, atomically) if missing."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = read_identity(directory)
    if existing is not None:
        return existing
    identity = StorageIdentity(uuid.uuid4().hex, time.time(), node, role)
    path = directory / IDENTITY_FILE
    tmp = directory / f"{IDENTITY_FILE}.{node}.{os.getpid()}"
    tmp.write_text(json.dumps(identity.to_json()) + "\n")
    try:
        os.link(tmp, path)  # atomic, and fails if another node won the race
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    found = read_identity(directory)
    assert found is not None
    return found


def describe(directory: Path) -> dict[str, object]:
    """What a directory is: its identity and the filesystem under it (for facts)."""
    identity = read_identity(directory)
    mount = mount_of(directory)
    return {
        "path": str(directory),
        "id": identity.id if identity else None,
        "fstype": mount.fstype,
        "filesystem": mount.label,
        "shared_fs": mount.shared,
        "source": mount.source,
        "free_bytes": free_bytes(directory),
    }


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use there (None: not there)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
