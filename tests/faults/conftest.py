"""The fault-injection suite's lab (two nodes with real agents, booted once per module; a
module may bring its own `lab`) and one scenario per test: a fresh guest on node1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.lab import agents
from corral.lab.image import GuestImage
from corral.lab.plan import LabPlan
from tests.faults.scenario import Scenario
from tests.lab_cluster import running_cluster


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cflt", 2) as plan:
        yield plan


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, lab: LabPlan, guest_image: GuestImage
) -> Iterator[Scenario]:
    """A module's DISK_FILL_MIB fills that much of the guest's disk with data first."""
    index = list(request.session.items).index(request.node) % 100
    s = Scenario(lab, f"f{index}", host=100 + index)
    s.boot(guest_image, fill_mib=getattr(request.module, "DISK_FILL_MIB", 0))
    yield s
    s.cleanup()
    for node in lab.nodes:  # a killed agent is back for the next scenario
        agents.start_agent(lab, node)
