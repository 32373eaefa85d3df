"""The VM service and the heartbeat's reconcile running at once: reconcile must not judge a
VM half-way through an operation. A restore kills the running hypervisor and starts the
restored one; a reconcile in between once found the VM "stopped", released its taps and
sockets under the new process and recorded it stopped (seen in CI as a restored guest that
no ping reached). Driven on the bhyve simulator so the window can be hit every time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from corral.database import Database
from corral.hypervisors.base import RunState, VmLayout
from corral.hypervisors.bhyve.driver import BhyveDriver
from corral.hypervisors.bhyve.host import BhyveHost
from corral.vms.directories import NodeDirectories
from corral.vms.inventory import VmInventory
from corral.vms.service import VmService
from corral.vms.specs import VmRequest
from tests.bhyve_sim.host import install


@pytest.fixture
def service(tmp_path: Path) -> VmService:
    driver = BhyveDriver(BhyveHost(install(tmp_path / "host").root))
    dirs = NodeDirectories(
        tmp_path / "data", tmp_path / "config", tmp_path / "system", tmp_path / "run"
    )
    dirs.ensure("node1")
    return VmService("node1", VmInventory(Database(tmp_path / "node.db")), driver, dirs)


def test_reconcile_waits_for_an_operation_and_judges_afterwards(
    service: VmService, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = VmRequest.model_validate(
        {"name": "race", "memory_mib": 64, "disks": [{"size_mib": 8, "format": "raw"}]}
    )
    service.create(request)
    service.start("race")
    try:
        service.checkpoint("race", "c1", suspend=False)
        driver = service.driver
        assert isinstance(driver, BhyveDriver)
        kill = driver.kill
        during: list[list[tuple[str, str, str]]] = []

        def kill_then_heartbeat(layout: VmLayout) -> None:
            kill(layout)
            # The heartbeat thread looks while the old process is gone and the restored one
            # not yet started.
            beat = threading.Thread(target=lambda: during.append(service.reconcile()))
            beat.start()
            beat.join()

        monkeypatch.setattr(driver, "kill", kill_then_heartbeat)
        restored = service.restore("race", "c1")
        monkeypatch.undo()

        assert during == [[]]  # it left the VM alone
        assert service.status("race").state == RunState.RUNNING
        assert service.status("race").pid == restored.pid
        assert service.record("race").state == RunState.RUNNING.value
        assert service.reconcile() == []
        # Once no operation holds it, reconcile judges the VM again.
        driver.kill(service.layout("race"))
        assert service.reconcile() == [("race", "running", "stopped")]
        assert service.record("race").state == RunState.STOPPED.value
    finally:
        service.driver.kill(service.layout("race"))
