"""Settings shared by every layer: where corral keeps its files. Each default can be
overridden by an environment variable, named beside it.

Must never import any other layer of corral.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "CORRAL_CACHE_DIR"  # default /var/cache/corral
LAB_ROOT_ENV = "CORRAL_LAB_ROOT"  # default /var/lib/corral-lab


def cache_dir() -> Path:
    """Where built artefacts (the test guest image) are cached."""
    return Path(os.environ.get(CACHE_DIR_ENV, "/var/cache/corral"))


def lab_root() -> Path:
    """Where the lab keeps its state, storage directories and run files."""
    return Path(os.environ.get(LAB_ROOT_ENV, "/var/lib/corral-lab"))
