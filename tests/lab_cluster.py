"""A lab cluster with real agents for a test module: up, joined, and always taken down, with
nothing of it left behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from corral.lab import agents, netns
from corral.lab.lifecycle import lab_down, lab_up
from corral.lab.plan import LabConfig, LabPlan
from corral.storage.filesystem import mount_of


@contextmanager
def running_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    prefix: str,
    nodes: int,
    storage: str = "dir",
    state: str = "gossip",
) -> Iterator[LabPlan]:
    root = tmp_path_factory.mktemp(prefix) / "lab"
    plan = lab_up(LabConfig(nodes=nodes, prefix=prefix, root=root, storage=storage, state=state))
    try:
        agents.form_cluster(plan)
        yield plan
    finally:
        lab_down(root)
    assert not set(plan.namespaces) & netns.existing_namespaces()
    assert mount_of(plan.shared_dir).fstype != "fuse.glusterfs"
