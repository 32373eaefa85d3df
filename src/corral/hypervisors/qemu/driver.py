"""The QEMU driver: the contract of hypervisors/base.py over QMP (qemu.qmp).

QEMU runs detached in its own session with two QMP monitors, a pid file and a console log
in the VM's runtime directory; every call finds it again from there, so the agent can be
restarted at any time and a VM that died meanwhile is seen as stopped.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from corral import commands
from corral.errors import HypervisorError, UserInputError
from corral.hypervisors import host_info, host_network
from corral.hypervisors.base import (
    CheckpointInfo,
    HostFacts,
    MigrationDriver,
    MigrationStatus,
    MigrationTuning,
    RunState,
    RuntimeStatus,
    VmLayout,
)
from corral.hypervisors.processes import log_tail
from corral.hypervisors.qemu import checkpoints, migration, process, tls_relay
from corral.hypervisors.qemu.cmdline import QEMU_BINARY, qemu_argv
from corral.hypervisors.qemu.disk_copy_driver import QemuDiskCopy
from corral.hypervisors.qemu.facts import QemuOffer, host_facts, probe_qemu
from corral.hypervisors.qemu.monitor_hub import HUB
from corral.hypervisors.qemu.qmp_session import QmpSession, qmp_call
from corral.hypervisors.tls_files import tls_dir_for
from corral.model import VmSpec
from corral.waiting import WaitTimeout, wait_for

QEMU_STATES = {
    "running": RunState.RUNNING,
    "paused": RunState.PAUSED,
    "prelaunch": RunState.PAUSED,
    "inmigrate": RunState.INCOMING,
    "postmigrate": RunState.MIGRATED,
    "finish-migrate": RunState.RUNNING,
    "save-vm": RunState.PAUSED,
    "restore-vm": RunState.INCOMING,
    "suspended": RunState.PAUSED,
    "shutdown": RunState.SHUTTING_DOWN,
    "internal-error": RunState.ERROR,
    "io-error": RunState.ERROR,
    "guest-panicked": RunState.ERROR,
    "debug": RunState.PAUSED,
    "watchdog": RunState.ERROR,
    "colo": RunState.RUNNING,
}


class QemuDriver(QemuDiskCopy, MigrationDriver):
    name = "qemu"

    def __init__(
        self,
        accelerator: str = "tcg",
        binary: str = QEMU_BINARY,
        allowed_cpu_models: tuple[str, ...] | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.binary = binary
        self.allowed_cpu_models = allowed_cpu_models

    @functools.cached_property
    def offer(self) -> QemuOffer:
        """What QEMU offers here, less the CPU models the operator chose not to offer (to
        keep a mixed cluster's VMs on models every node has)."""
        offer = probe_qemu(self.accelerator, self.binary)
        if self.allowed_cpu_models is None:
            return offer
        allowed = set(self.allowed_cpu_models)
        return QemuOffer(
            offer.version, tuple(m for m in offer.cpu_models if m in allowed), offer.machine_types
        )

    def memory_free_mib(self) -> int | None:
        return host_info.memory_mib()[1]  # /proc/meminfo's MemAvailable, as facts() reads it

    def facts(self) -> HostFacts:
        return replace(
            host_facts(self.offer, self.accelerator),
            bridges=tuple(sorted(host_network.bridges())),
        )

    # -- definition ------------------------------------------------------------------------

    def define(self, spec: VmSpec) -> None:
        if shutil.which(self.binary) is None:
            raise HypervisorError(f"{self.binary} is not installed")
        if self.offer.cpu_models and spec.cpu.model not in self.offer.cpu_models:
            raise UserInputError(
                "cpu.model",
                f"{spec.cpu.model!r} is not offered by QEMU"
                f" {self.offer.version} here with {self.accelerator}",
            )
        if self.offer.machine_types and spec.machine not in self.offer.machine_types:
            raise UserInputError(
                "machine", f"{spec.machine!r} is not a machine type of QEMU {self.offer.version}"
            )
        present = host_network.bridges()
        for i, nic in enumerate(spec.nics):
            if nic.bridge not in present:
                known = ", ".join(sorted(present)) or "none"
                raise UserInputError(
                    f"nics[{i}].bridge", f"no bridge {nic.bridge!r} on this node (bridges: {known})"
                )
        for i, disk in enumerate(spec.disks):
            if disk.path.exists():
                continue
            if disk.size_mib is None:
                raise UserInputError(f"disks[{i}].path", f"{disk.path} does not exist")
            disk.path.parent.mkdir(parents=True, exist_ok=True)
            commands.run(
                ["qemu-img", "create", "-q", "-f", disk.format, str(disk.path), f"{disk.size_mib}M"]
            )

    def undefine(
        self, spec: VmSpec, layout: VmLayout, *, delete_disks: bool, keep_logs: bool = False
    ) -> None:
        if process.find_pid(layout) is not None:
            raise HypervisorError(f"VM {spec.name} is running; stop it first")
        for nic in spec.nics:
            host_network.remove_tap(nic.tap)
        if keep_logs:
            process.clean_runtime(layout)
            for tls in layout.runtime_dir.glob("tls-*"):
                shutil.rmtree(tls, ignore_errors=True)
        else:
            shutil.rmtree(layout.runtime_dir, ignore_errors=True)
        if delete_disks:
            for disk in spec.disks:
                if disk.size_mib is not None:  # only disks corral created
                    disk.path.unlink(missing_ok=True)
            shutil.rmtree(layout.checkpoint_dir, ignore_errors=True)

    # -- lifecycle -------------------------------------------------------------------------

    def _launch(self, spec: VmSpec, layout: VmLayout, *, paused: bool, incoming: str | None) -> int:
        if process.find_pid(layout) is not None:
            raise HypervisorError(f"VM {spec.name} already runs here")
        for nic in spec.nics:
            host_network.ensure_tap(nic.tap, nic.bridge)
        argv = qemu_argv(
            spec,
            layout,
            accel=self.accelerator,
            incoming=incoming,
            paused=paused,
            binary=self.binary,
        )
        return process.spawn(argv, layout)

    def start(self, spec: VmSpec, layout: VmLayout, *, paused: bool = False) -> RuntimeStatus:
        pid = self._launch(spec, layout, paused=paused, incoming=None)
        return RuntimeStatus(RunState.PAUSED if paused else RunState.RUNNING, pid)

    def start_incoming(self, spec: VmSpec, layout: VmLayout) -> RuntimeStatus:
        """Start the VM waiting for its state (`-incoming defer`): a checkpoint or a
        migration stream."""
        pid = self._launch(spec, layout, paused=True, incoming="defer")
        return RuntimeStatus(RunState.INCOMING, pid)

    def _gone(self, layout: VmLayout) -> bool:
        return process.find_pid(layout) is None

    def shutdown(self, layout: VmLayout, timeout: float) -> bool:
        pid = process.find_pid(layout)
        if pid is None:
            return True
        try:
            qmp_call(layout.control_socket, "system_powerdown")
            wait_for(lambda: self._gone(layout), timeout=timeout, what="the guest to power off")
            graceful = True
        except (WaitTimeout, HypervisorError):
            graceful = False
            with QmpSession(layout.control_socket) as qmp:
                qmp.quit()
            try:
                wait_for(lambda: self._gone(layout), timeout=10, what="QEMU to quit")
            except WaitTimeout:
                process.terminate(pid)
        process.reap_children()
        process.clean_runtime(layout)
        return graceful

    def kill(self, layout: VmLayout) -> None:
        pid = process.find_pid(layout)
        if pid is not None:
            process.terminate(pid, timeout=0.5)
        process.clean_runtime(layout)

    def pause(self, layout: VmLayout) -> None:
        qmp_call(layout.control_socket, "stop")

    def resume(self, layout: VmLayout) -> None:
        qmp_call(layout.control_socket, "cont")

    def status(self, layout: VmLayout) -> RuntimeStatus:
        process.reap_children()
        pid = process.find_pid(layout)
        if pid is None:
            return RuntimeStatus(RunState.STOPPED)
        try:
            answer = HUB.query(layout.status_socket, "query-status", timeout=3)
        except HypervisorError as exc:
            return RuntimeStatus(RunState.STARTING, pid, str(exc))
        qemu_state = str(answer.get("status", ""))
        return RuntimeStatus(QEMU_STATES.get(qemu_state, RunState.ERROR), pid, qemu_state)

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(
        self, spec: VmSpec, layout: VmLayout, name: str, *, suspend: bool
    ) -> CheckpointInfo:
        if process.find_pid(layout) is None:
            raise HypervisorError(f"VM {spec.name} is not running")
        with QmpSession(layout.control_socket, timeout=30) as qmp:
            info = checkpoints.save(
                qmp, spec, layout, name, qemu_version=self.offer.version, suspend=suspend
            )
        if suspend:
            wait_for(lambda: self._gone(layout), timeout=30, what="QEMU to quit")
            process.clean_runtime(layout)
        return info

    def restore(self, spec: VmSpec, layout: VmLayout, name: str) -> RuntimeStatus:
        info = checkpoints.read_info(layout, name)
        checkpoints.check_restorable(info, spec, self.offer.version)
        if process.find_pid(layout) is not None:
            self.kill(layout)
        checkpoints.revert_disks(spec, name)
        status = self.start_incoming(spec, layout)
        try:
            with QmpSession(layout.control_socket, timeout=30) as qmp:
                checkpoints.load_state(qmp, layout, name)
        except BaseException:
            self.kill(layout)
            raise
        return RuntimeStatus(RunState.RUNNING, status.pid)

    def delete_checkpoint(self, spec: VmSpec, layout: VmLayout, name: str) -> None:
        if process.find_pid(layout) is not None:
            with QmpSession(layout.control_socket) as qmp:
                checkpoints.delete(spec, layout, name, qmp)
        else:
            checkpoints.delete(spec, layout, name, None)

    def list_checkpoints(self, layout: VmLayout) -> list[CheckpointInfo]:
        return checkpoints.list_infos(layout)

    # -- migration -------------------------------------------------------------------------

    def compatible(
        self, spec: VmSpec, source: dict[str, Any], target: dict[str, Any]
    ) -> list[tuple[str, str]]:
        reasons: list[tuple[str, str]] = []
        if target.get("hypervisor") != "qemu":
            return [("hypervisor", f"the target runs {target.get('hypervisor')}, not QEMU")]
        if source.get("accelerator") != target.get("accelerator"):
            reasons.append(
                (
                    "accelerator",
                    f"the source uses {source.get('accelerator')}, the"
                    f" target {target.get('accelerator')}",
                )
            )
        if spec.cpu.model not in target.get("cpu_models", []):
            reasons.append(
                ("cpu-model", f"CPU model {spec.cpu.model!r} is not available on the target")
            )
        if spec.machine not in target.get("machine_types", []):
            reasons.append(
                (
                    "machine-type",
                    f"machine type {spec.machine!r} is not known to"
                    f" QEMU {target.get('hypervisor_version')} on the target",
                )
            )
        src_v = _version(str(source.get("hypervisor_version", "")))
        dst_v = _version(str(target.get("hypervisor_version", "")))
        if src_v > dst_v:
            reasons.append(
                (
                    "qemu-version",
                    f"the target's QEMU {target.get('hypervisor_version')}"
                    f" is older than the source's {source.get('hypervisor_version')}",
                )
            )
        return reasons

    def migration_tls_dir(
        self, layout: VmLayout, endpoint: str, ca: Path, cert: Path, key: Path
    ) -> Path:
        return tls_dir_for(layout, endpoint, ca, cert, key)

    def migration_listen(
        self, spec: VmSpec, layout: VmLayout, address: str, port: int, tuning: MigrationTuning
    ) -> None:
        self.start_incoming(spec, layout)
        try:
            migration.listen(layout, address, port, tuning)
        except BaseException:
            self.kill(layout)
            raise

    def migration_incoming_done(self, layout: VmLayout, *, resume: bool = True) -> bool:
        if process.find_pid(layout) is None:
            log = log_tail(layout.process_log)
            raise HypervisorError(f"the incoming QEMU exited: {log}")
        state = migration.incoming_state(layout)
        if state in ("paused", "running"):
            tls_relay.stop(layout, force=False)  # arrived: its relay listens no more
        if state == "paused":  # arrived: the incoming QEMU runs with -S
            if resume:
                self.resume(layout)
            return True
        if state in ("internal-error", "shutdown", "guest-panicked"):
            raise HypervisorError(f"the incoming VM is in state {state}")
        return state == "running"

    def migration_wait(self, layout: VmLayout, timeout: float) -> None:
        migration.wait_change(layout, timeout)  # QEMU's next event on the kept monitor

    def migration_start(
        self, layout: VmLayout, address: str, port: int, tuning: MigrationTuning
    ) -> None:
        migration.start(layout, address, port, tuning)

    def migration_status(self, layout: VmLayout) -> MigrationStatus:
        return migration.status(layout)

    def migration_tune(
        self,
        layout: VmLayout,
        *,
        downtime_ms: int | None = None,
        engage_auto_converge: bool = False,
    ) -> None:
        params: dict[str, Any] = {}
        if downtime_ms is not None:
            params["downtime-limit"] = downtime_ms
        if engage_auto_converge:
            params["throttle-trigger-threshold"] = 50
        if params:
            migration.set_parameters(layout, params)

    def migration_postcopy(self, layout: VmLayout) -> None:
        migration.start_postcopy(layout)

    def migration_force(self, layout: VmLayout) -> None:
        migration.pause_source(layout)

    def migration_cancel(self, layout: VmLayout) -> None:
        migration.cancel(layout)

    def migration_resume_source(self, layout: VmLayout) -> None:
        migration.resume_source(layout)

    def measure_dirty_rate(self, layout: VmLayout, seconds: int) -> int:
        return migration.calc_dirty_rate(layout, seconds)

    def resident_guest_bytes(self, layout: VmLayout, ram_bytes: int) -> int | None:
        pid = process.find_pid(layout)
        return None if pid is None else process.resident_ram(pid, ram_bytes)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())
