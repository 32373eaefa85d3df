"""Shared fixtures: the test guest image (built once per session into the normal cache)."""

from __future__ import annotations

import os

import pytest

from corral import config
from corral.lab.image import GuestImage, GuestImageBuilder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, taps)")
    for item in items:
        if "lab" in item.keywords or "qemu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The cached test guest (built on first use)."""
    return GuestImageBuilder(config.cache_dir()).build()
