"""The fault-injection suite's lab: two nodes with real agents, booted once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.lab.plan import LabPlan
from tests.lab_cluster import running_cluster


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cflt", 2) as plan:
        yield plan
