"""The fault-injection suite's lab: two nodes with real agents, booted once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.lab import agents, netns
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig, LabPlan


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    root = tmp_path_factory.mktemp("faults") / "lab"
    plan = lab_up(LabConfig(nodes=2, prefix="cflt", root=root))
    try:
        agents.form_cluster(plan)
        yield plan
    finally:
        lab_down(root)
    assert not set(plan.namespaces) & netns.existing_namespaces()
