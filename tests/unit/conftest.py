"""What several unit test modules share: an agent in process (real SQLite, real runner),
outside any cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.agent.node_agent import NodeAgent
from corral.agent.settings import AgentSettings
from corral.agent.task_kinds import builtin_kinds


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NodeAgent]:
    settings = AgentSettings(
        node_name="unit",
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        storage_dir=tmp_path / "storage",
    )
    a = NodeAgent(settings, builtin_kinds)
    a.runner.start()
    yield a
    a.runner.stop(grace=2)
    a.close()
