"""The VM service and the heartbeat's reconcile running at once: reconcile must not judge a
VM half-way through an operation. A restore kills the running hypervisor and starts the
restored one; a reconcile in between once found the VM "stopped", released its taps and
sockets under the new process and recorded it stopped (seen in CI as a restored guest that
no ping reached). And a migration holds its VM: other operations are refused meanwhile.
Driven on the bhyve simulator so the windows can be hit every time."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.database import Database
from corral.errors import ConflictError
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


@contextlib.contextmanager
def running_with_checkpoint(service: VmService, name: str) -> Iterator[None]:
    """VM `name` defined, started, with checkpoint c1 saved; killed at the end."""
    request = VmRequest.model_validate(
        {"name": name, "memory_mib": 64, "disks": [{"size_mib": 8, "format": "raw"}]}
    )
    try:
        service.create(request)
        service.start(name)
        service.checkpoint(name, "c1", suspend=False)
        yield
    finally:
        service.driver.kill(service.layout(name))


def test_reconcile_waits_for_an_operation_and_judges_afterwards(
    service: VmService, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_with_checkpoint(service, "race"):
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


def test_a_migration_hold_refuses_other_operations_but_kill(service: VmService) -> None:
    with running_with_checkpoint(service, "moving"):
        with service.hold("moving", "migrating to node2"):
            refusals: dict[str, Callable[[], object]] = {
                "start": lambda: service.start("moving"),
                "stop": lambda: service.stop("moving", 1),
                "pause": lambda: service.pause("moving"),
                "checkpoint": lambda: service.checkpoint("moving", "c2", suspend=False),
                "restore": lambda: service.restore("moving", "c1"),
                "delete": lambda: service.delete("moving"),
                "queue": lambda: service.changeable("moving"),
            }
            for what, call in refusals.items():
                with pytest.raises(ConflictError, match="is migrating to node2; wait") as why:
                    call()
                assert "corral migrate --cancel moving" in str(why.value), what
            second = service.hold("moving", "migrating to node3")
            with pytest.raises(ConflictError, match="is migrating to node2"):
                second.__enter__()
            # The VM ran on untouched; reconcile leaves a held VM to what holds it.
            assert service.status("moving").state == RunState.RUNNING
            service.driver.kill(service.layout("moving"))
            assert service.reconcile() == []
            assert service.record("moving").state == RunState.RUNNING.value
            service.kill("moving")  # kill is allowed: an emergency stop
            assert service.record("moving").state == RunState.STOPPED.value
        assert service.held("moving") is None
        service.start("moving")  # free again
        assert service.status("moving").state == RunState.RUNNING
        # A hypervisor that died while held is recorded as soon as the holder asks.
        with service.hold("moving", "migrating to node2"):
            service.driver.kill(service.layout("moving"))
            assert service.reconcile_vm("moving") is None  # still held: left alone
        assert service.reconcile_vm("moving") == ("moving", "running", "stopped")
        assert service.record("moving").state == RunState.STOPPED.value


def test_kill_never_waits_for_an_operation_in_progress(service: VmService) -> None:
    """A graceful stop may wait minutes for its guest; kill is the way out meanwhile."""
    with running_with_checkpoint(service, "urgent"):
        busy, done = threading.Event(), threading.Event()

        def long_operation() -> None:
            with service.operating("urgent"):
                busy.set()
                done.wait(60)

        operation = threading.Thread(target=long_operation)
        operation.start()
        assert busy.wait(10)
        killer = threading.Thread(target=lambda: service.kill("urgent"))
        killer.start()
        killer.join(20)
        try:
            assert not killer.is_alive(), "kill waited for the operation"
            assert service.status("urgent").state == RunState.STOPPED
            assert service.record("urgent").state == RunState.STOPPED.value
        finally:
            done.set()
            operation.join()
            killer.join()


def test_a_hold_begins_only_after_the_operation_in_progress(service: VmService) -> None:
    """A migration that starts while a restore runs waits for it, so the two never overlap."""
    busy, done, holding = threading.Event(), threading.Event(), threading.Event()

    def operation() -> None:
        with service.operating("vm1"):
            busy.set()
            done.wait(60)

    def migration() -> None:
        with service.hold("vm1", "migrating to node2"):
            holding.set()

    threads = [threading.Thread(target=operation), threading.Thread(target=migration)]
    threads[0].start()
    assert busy.wait(10)
    threads[1].start()
    try:
        assert not holding.wait(0.5)  # it waits for the operation
    finally:
        done.set()
    assert holding.wait(10)
    for thread in threads:
        thread.join(10)
    assert service.held("vm1") is None
