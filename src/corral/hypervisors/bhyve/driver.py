"""The bhyve driver (FreeBSD): the contract of hypervisors/base.py over bhyve(8) and
bhyvectl(8), built from their documented behaviour and verified here against the simulator
in tests/bhyve_sim (FreeBSD cannot run on the machines this was written on).

Each VM runs under a detached supervisor (supervisor.py) that restarts bhyve on a guest
reboot but never after the VM left (migrated or suspended). Pause is SIGSTOP of the bhyve
process (bhyvectl has no pause). A checkpoint suspends the VM (`bhyvectl --suspend`), copies
its raw disks while nothing writes them, and restores it (`bhyve -r`) unless asked to stay
suspended: the disks and memory then agree. Migration runs bhyve's own stream (`bhyve -R`,
`bhyvectl --migrate[-live]`) through corral's TLS tunnel (relay.py); bhyve has no downtime
limit, auto-converge, post-copy or parallel streams, so the driver says so
(`migration_features`) and preflight refuses those options.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from corral.errors import ConflictError, HypervisorError, NotFoundError, UserInputError
from corral.hypervisors.base import (
    CheckpointInfo,
    HostFacts,
    MigrationDriver,
    MigrationState,
    MigrationStatus,
    MigrationTuning,
    RunState,
    RuntimeStatus,
    VmLayout,
)
from corral.hypervisors.bhyve import console, network
from corral.hypervisors.bhyve import facts as bhyve_facts
from corral.hypervisors.bhyve.announce import Nic
from corral.hypervisors.bhyve.cmdline import (
    bhyve_argv,
    check_spec,
    checkpoint_argv,
    destroy_argv,
    migrate_argv,
)
from corral.hypervisors.bhyve.disks import copy_sparse
from corral.hypervisors.bhyve.host import BhyveHost
from corral.hypervisors.bhyve.runtime import Runtime, read_json, stopped
from corral.hypervisors.processes import log_tail, terminate
from corral.hypervisors.tls_files import tls_dir_for
from corral.model import VmSpec, spec_digest
from corral.waiting import WaitTimeout, wait_for

SUPERVISOR = "corral.hypervisors.bhyve.supervisor"
RELAY = "corral.hypervisors.bhyve.relay"
CONSOLE = "corral.hypervisors.bhyve.console"
# The sending tunnel's states (relay.py's status file) in corral's words.
TUNNEL_STATES = {
    "setup": MigrationState.SETUP,
    "active": MigrationState.ACTIVE,
    "completed": MigrationState.COMPLETED,
    "failed": MigrationState.FAILED,
    "cancelled": MigrationState.CANCELLED,
}
STATE_FILE = "state"  # in a checkpoint's directory: state, state.kern, state.meta


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_TAP_LOCK = threading.Lock()  # choosing a free tap and creating it is one step


class BhyveDriver(MigrationDriver):
    name = "bhyve"
    migration_features: frozenset[str] = frozenset()
    arrives_paused = False  # the receiving bhyve goes on by itself when the stream ends

    def __init__(self, host: BhyveHost | None = None) -> None:
        self.host = host or BhyveHost()

    @functools.cached_property
    def offer(self) -> bhyve_facts.BhyveOffer:
        """What bhyve can do here (probed once; facts() probes afresh)."""
        return bhyve_facts.probe(self.host)

    def facts(self) -> HostFacts:
        found = bhyve_facts.host_facts(bhyve_facts.probe(self.host))
        return replace(found, bridges=tuple(sorted(network.bridges(self.host.ifconfig))))

    # -- definition ------------------------------------------------------------------------

    def define(self, spec: VmSpec) -> None:
        if not Path(self.host.bhyve).exists():
            raise HypervisorError(f"{self.host.bhyve} is not installed")
        check_spec(spec)
        present = network.bridges(self.host.ifconfig) if spec.nics else set()
        for i, nic in enumerate(spec.nics):
            if nic.bridge not in present:
                raise UserInputError(f"nics[{i}].bridge", f"no bridge {nic.bridge!r} here")
        for i, disk in enumerate(spec.disks):
            if disk.path.exists():
                continue
            if disk.size_mib is None:
                raise UserInputError(f"disks[{i}].path", f"{disk.path} does not exist")
            disk.path.parent.mkdir(parents=True, exist_ok=True)
            with disk.path.open("xb") as image:
                image.truncate(disk.size_mib << 20)

    def undefine(
        self, spec: VmSpec, layout: VmLayout, *, delete_disks: bool, keep_logs: bool = False
    ) -> None:
        runtime = Runtime(layout)
        if runtime.supervisor_pid() is not None or runtime.bhyve_pid(spec.name) is not None:
            raise HypervisorError(f"VM {spec.name} is running; stop it first")
        for device in runtime.taps():
            network.remove_tap(self.host.ifconfig, device)
        runtime.unmark("taps.json")
        if keep_logs:
            runtime.clean()
            for tls in layout.runtime_dir.glob("tls-*"):
                shutil.rmtree(tls, ignore_errors=True)
        else:
            shutil.rmtree(layout.runtime_dir, ignore_errors=True)
        if delete_disks:
            for disk in spec.disks:
                if disk.size_mib is not None:
                    disk.path.unlink(missing_ok=True)
            shutil.rmtree(layout.checkpoint_dir, ignore_errors=True)

    # -- lifecycle -------------------------------------------------------------------------

    def _launch(
        self,
        spec: VmSpec,
        layout: VmLayout,
        *,
        restore_from: Path | None = None,
        receive_from: tuple[str, int] | None = None,
    ) -> int:
        runtime = Runtime(layout)
        if runtime.supervisor_pid() is not None or runtime.bhyve_pid(spec.name) is not None:
            raise HypervisorError(f"VM {spec.name} already runs here")
        layout.runtime_dir.mkdir(parents=True, exist_ok=True)
        taps = self._taps(spec, runtime)
        unit = self._console_unit(spec, runtime)
        argv = bhyve_argv(
            spec,
            console=str(self.host.nmdm(unit, "A")),
            firmware=self.host.firmware,
            restore_from=restore_from,
            receive_from=receive_from,
            binary=self.host.bhyve,
            taps=taps,
        )
        runtime.clean()
        runtime.unmark("exit.json")
        runtime.mark("vm.json", json.dumps({"name": spec.name, "memory": spec.memory_mib << 20}))
        if receive_from is not None:
            runtime.mark("incoming")
        args = [str(layout.runtime_dir), self.host.bhyvectl, spec.name, "--", *argv]
        proc = runtime.spawn(SUPERVISOR, args, "supervisor.pid")
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        side_b, log = str(self.host.nmdm(unit, "B")), str(layout.console_log)
        logger = runtime.spawn(CONSOLE, [side_b, log, str(proc.pid)], "console.pid")
        threading.Thread(target=logger.wait, name=f"reap-{logger.pid}", daemon=True).start()

        def created() -> int | None:
            if proc.poll() is not None:
                ended = read_json(runtime.path("exit.json")) or {}
                why = ended.get("reason", "unknown")
                raise HypervisorError(f"bhyve exited ({why}): {log_tail(layout.process_log)}")
            pid = runtime.bhyve_pid(spec.name)
            return pid if pid is not None and (self.host.vmm_dir / spec.name).exists() else None

        try:
            return wait_for(created, timeout=30, what=f"bhyve to create {spec.name}")
        except WaitTimeout:
            self.kill(layout)
            raise

    def _taps(self, spec: VmSpec, runtime: Runtime) -> list[str]:
        """The VM's tap devices, on their bridges: the ones it had here if it had them (a
        restart, a restore), else free ones (network.tap_device), recorded in taps.json."""
        with _TAP_LOCK:
            devices = runtime.taps()
            if len(devices) != len(spec.nics):
                for device in devices:
                    network.remove_tap(self.host.ifconfig, device)
                devices = []

                def taken(device: str) -> bool:
                    return device in devices or network.interface_exists(self.host.ifconfig, device)

                for nic in spec.nics:
                    devices.append(network.tap_device(nic.tap, taken))
            runtime.mark("taps.json", json.dumps({"devices": devices}))
            for nic, device in zip(spec.nics, devices, strict=True):
                network.ensure_tap(self.host.ifconfig, device, nic.bridge)
        return devices

    def _console_unit(self, spec: VmSpec, runtime: Runtime) -> int:
        """The VM's nmdm unit (console.py): the one it has recorded here, else a free one;
        nmdm.ko is loaded first if it is not (bhyve's open of /dev/nmdmNA needs it)."""
        self._load_module("nmdm")
        with _TAP_LOCK:
            unit = console.recorded_unit(runtime.dir)
            if unit is None:
                others = [
                    d for d in runtime.dir.parent.iterdir() if d.is_dir() and d != runtime.dir
                ]
                taken = console.units_in(self.host.dev) | console.recorded_elsewhere(others)
                unit = console.pick_unit(spec.name, taken.__contains__)
                runtime.mark("console.json", json.dumps({"unit": unit}))
        old = runtime.console_pid()
        if old is not None:  # a logger of a bhyve that ended: one reader per pair
            terminate(old, signal.SIGKILL)
        return unit

    def _load_module(self, module: str) -> None:
        """kldload(8) `module` unless kldstat(8) lists it."""
        if subprocess.run([self.host.kldstat, "-q", "-m", module], check=False).returncode == 0:
            return
        out = subprocess.run(
            [self.host.kldload, "-n", module], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise HypervisorError(f"kldload {module}: {out.stderr.strip()}")

    def start(self, spec: VmSpec, layout: VmLayout, *, paused: bool = False) -> RuntimeStatus:
        pid = self._launch(spec, layout)
        if paused:
            os.kill(pid, signal.SIGSTOP)
        return RuntimeStatus(RunState.PAUSED if paused else RunState.RUNNING, pid)

    def _name(self, layout: VmLayout) -> str:
        name = Runtime(layout).vm().get("name")
        if not isinstance(name, str):
            raise HypervisorError(f"no bhyve VM was started from {layout.runtime_dir}")
        return name

    def _bhyve(self, layout: VmLayout) -> int:
        pid = Runtime(layout).bhyve_pid(self._name(layout))
        if pid is None:
            raise HypervisorError(f"VM {self._name(layout)} is not running")
        return pid

    def shutdown(self, layout: VmLayout, timeout: float) -> bool:
        runtime = Runtime(layout)
        pid = runtime.supervisor_pid()
        if pid is None:
            self.kill(layout)
            return True
        bhyve = runtime.bhyve_pid(self._name(layout))
        if bhyve is not None and stopped(bhyve):
            os.kill(bhyve, signal.SIGCONT)  # a paused guest cannot see its power button
        graceful = terminate(pid, timeout=timeout)
        self.kill(layout)
        return graceful

    def kill(self, layout: VmLayout) -> None:
        runtime = Runtime(layout)
        name = runtime.vm().get("name")
        for side in ("send", "receive"):  # a tunnel of a migration that did not finish
            relay = runtime.relay_pid(side)
            if relay is not None:
                terminate(relay, signal.SIGKILL)
        supervisor = runtime.supervisor_pid()
        if supervisor is not None:
            terminate(supervisor, signal.SIGKILL)  # first, so it restarts nothing
        logger = runtime.console_pid()
        if logger is not None:
            terminate(logger, signal.SIGKILL)
        if isinstance(name, str):
            bhyve = runtime.bhyve_pid(name)
            if bhyve is not None:
                terminate(bhyve, signal.SIGKILL)
            if (self.host.vmm_dir / name).exists():
                self._bhyvectl(destroy_argv(name, binary=self.host.bhyvectl), check=False)
        runtime.clean()

    def _bhyvectl(self, argv: list[str], *, check: bool = True) -> None:
        flags = argv[2:]
        try:
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HypervisorError(f"bhyvectl {' '.join(flags)} did not answer in 180 s") from exc
        if check and out.returncode != 0:
            raise HypervisorError(f"bhyvectl {' '.join(flags)}: {out.stderr.strip()[-300:]}")

    def pause(self, layout: VmLayout) -> None:
        """SIGSTOP of the bhyve process (bhyvectl has no pause); returns once it holds."""
        pid = self._bhyve(layout)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: stopped(pid), timeout=10, what="bhyve to stop", interval=0.01)

    def resume(self, layout: VmLayout) -> None:
        pid = self._bhyve(layout)
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: not stopped(pid), timeout=10, what="bhyve to go on", interval=0.01)

    def status(self, layout: VmLayout) -> RuntimeStatus:
        runtime = Runtime(layout)
        name = runtime.vm().get("name")
        if not isinstance(name, str):
            return RuntimeStatus(RunState.STOPPED)
        pid = runtime.bhyve_pid(name)
        if pid is None:
            if runtime.supervisor_pid() is not None:
                return RuntimeStatus(RunState.STARTING, None, "bhyve restarting (guest reboot)")
            ended = read_json(runtime.path("exit.json")) or {}
            return RuntimeStatus(RunState.STOPPED, None, str(ended.get("reason", "")))
        if stopped(pid):
            return RuntimeStatus(RunState.PAUSED, pid, "SIGSTOP")
        if runtime.marked("incoming"):
            return RuntimeStatus(RunState.INCOMING, pid, "bhyve -R")
        if (read_json(runtime.path("send.json")) or {}).get("state") == "completed":
            return RuntimeStatus(RunState.MIGRATED, pid)
        if not (self.host.vmm_dir / name).exists():
            return RuntimeStatus(RunState.STARTING, pid)
        return RuntimeStatus(RunState.RUNNING, pid)

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint_dir(self, layout: VmLayout, name: str) -> Path:
        return layout.checkpoint_dir / name

    def checkpoint(
        self, spec: VmSpec, layout: VmLayout, name: str, *, suspend: bool
    ) -> CheckpointInfo:
        if not self.offer.snapshot:
            raise HypervisorError("bhyve here was built without BHYVE_SNAPSHOT (no checkpoints)")
        if stopped(self._bhyve(layout)):
            self.resume(layout)  # a stopped bhyve cannot answer; --suspend pauses it anyway
        folder = self._checkpoint_dir(layout, name)
        if folder.exists():
            raise ConflictError(f"checkpoint {name!r} of {spec.name} already exists")
        folder.mkdir(parents=True)
        state = folder / STATE_FILE
        runtime = Runtime(layout)
        runtime.mark("suspending", str(state))
        try:
            argv = checkpoint_argv(spec.name, state, suspend=True, binary=self.host.bhyvectl)
            self._bhyvectl(argv)
            wait_for(lambda: runtime.supervisor_pid() is None, timeout=60, what="bhyve to suspend")
        except BaseException:
            runtime.unmark("suspending")
            shutil.rmtree(folder, ignore_errors=True)
            raise
        snapshots = []
        for i, disk in enumerate(spec.disks):  # nothing writes them now: consistent
            copy_sparse(disk.path, folder / f"disk-{i}.img")
            snapshots.append(f"disk-{i}.img")
        info = CheckpointInfo(
            name=name,
            vm=spec.name,
            spec_digest=spec_digest(spec),
            hypervisor="bhyve",
            hypervisor_version=self.offer.sysctl["kern.osrelease"],
            created_at=time.time(),
            size_bytes=sum(p.stat().st_size for p in folder.iterdir()),
            suspended=suspend,
            disk_snapshots=tuple(snapshots),
        )
        (folder / "info.json").write_text(json.dumps(info.to_json()))
        runtime.clean()
        if not suspend:
            self._launch(spec, layout, restore_from=state)
        return info

    def _info(self, layout: VmLayout, name: str) -> CheckpointInfo:
        try:
            data = json.loads((self._checkpoint_dir(layout, name) / "info.json").read_text())
        except FileNotFoundError as exc:
            raise NotFoundError(f"no checkpoint {name!r}") from exc
        return CheckpointInfo.from_json(data)

    def restore(self, spec: VmSpec, layout: VmLayout, name: str) -> RuntimeStatus:
        info = self._info(layout, name)
        if info.hypervisor != "bhyve" or info.spec_digest != spec_digest(spec):
            raise ConflictError(
                f"checkpoint {name!r} was saved for another spec or hypervisor"
                f" ({info.hypervisor}, spec {info.spec_digest}); restore refused"
            )
        self.kill(layout)
        folder = self._checkpoint_dir(layout, name)
        for disk, snapshot in zip(spec.disks, info.disk_snapshots, strict=True):
            copy_sparse(folder / snapshot, disk.path)
        pid = self._launch(spec, layout, restore_from=folder / STATE_FILE)
        return RuntimeStatus(RunState.RUNNING, pid)

    def delete_checkpoint(self, spec: VmSpec, layout: VmLayout, name: str) -> None:
        self._info(layout, name)
        shutil.rmtree(self._checkpoint_dir(layout, name))

    def list_checkpoints(self, layout: VmLayout) -> list[CheckpointInfo]:
        if not layout.checkpoint_dir.is_dir():
            return []
        return [
            self._info(layout, d.name)
            for d in sorted(layout.checkpoint_dir.iterdir())
            if (d / "info.json").exists()
        ]

    # -- migration -------------------------------------------------------------------------

    def compatible(
        self, spec: VmSpec, source: dict[str, Any], target: dict[str, Any]
    ) -> list[tuple[str, str]]:
        return bhyve_facts.compatible(spec, source, target)

    def migration_tls_dir(
        self, layout: VmLayout, endpoint: str, ca: Path, cert: Path, key: Path
    ) -> Path:
        return tls_dir_for(layout, endpoint, ca, cert, key)

    def migration_listen(
        self, spec: VmSpec, layout: VmLayout, address: str, port: int, tuning: MigrationTuning
    ) -> None:
        inner = _free_local_port()  # bhyve listens where only the tunnel reaches it
        self._launch(spec, layout, receive_from=("127.0.0.1", inner))
        runtime = Runtime(layout)
        args = ["receive", "--status", str(runtime.path("receive.json"))]
        args += ["--listen", f"{address}:{port}", "--to", f"127.0.0.1:{inner}"]
        for nic, device in zip(spec.nics, runtime.taps(), strict=True):
            args += ["--announce", Nic(device, nic.bridge, nic.mac).to_arg()]
        if tuning.tls_dir is not None:
            args += ["--tls-dir", str(tuning.tls_dir)]
            if tuning.tls_peer_name:
                args += ["--peer-name", tuning.tls_peer_name]
        runtime.spawn(RELAY, args, "receive.pid")

        def listening() -> bool:
            state = (read_json(runtime.path("receive.json")) or {}).get("state")
            if state == "failed":
                raise HypervisorError(
                    f"the migration tunnel failed: {log_tail(layout.process_log)}"
                )
            return state == "listening"

        try:
            wait_for(listening, timeout=30, what="the migration tunnel to listen")
        except BaseException:
            self.kill(layout)
            raise

    def migration_incoming_done(self, layout: VmLayout, *, resume: bool = True) -> bool:
        # bhyve's tunnel resumes the VM itself; `resume` matters only with a disk copy,
        # which bhyve has not (preflight refuses it).
        runtime = Runtime(layout)
        if runtime.bhyve_pid(self._name(layout)) is None:
            raise HypervisorError(f"the incoming bhyve exited: {log_tail(layout.process_log)}")
        tunnel = read_json(runtime.path("receive.json")) or {}
        if tunnel.get("state") == "failed":
            raise HypervisorError(f"the migration tunnel failed: {tunnel.get('error')}")
        if tunnel.get("state") != "completed":
            return False
        runtime.unmark("incoming")
        return True

    def migration_start(
        self, layout: VmLayout, address: str, port: int, tuning: MigrationTuning
    ) -> None:
        name = self._name(layout)
        self._bhyve(layout)
        runtime = Runtime(layout)
        runtime.unmark("send.json")
        runtime.mark("departing")  # from here an exit 0 may be the VM leaving, not a reboot
        args = ["send", "--status", str(runtime.path("send.json")), "--to", f"{address}:{port}"]
        if tuning.tls_dir is not None:
            args += ["--tls-dir", str(tuning.tls_dir), "--hostname", tuning.tls_hostname or address]
        args += ["--bandwidth", str(tuning.bandwidth_bytes), "--"]
        live = self.offer.live_migration
        args += migrate_argv(name, "127.0.0.1", "{port}", live=live, binary=self.host.bhyvectl)
        runtime.spawn(RELAY, args, "send.pid")

    def migration_wait(self, layout: VmLayout, timeout: float) -> None:
        # bhyve sends no events: the relay's and bhyve's state files are looked at again.
        time.sleep(min(timeout, 0.05))

    def migration_status(self, layout: VmLayout) -> MigrationStatus:
        runtime = Runtime(layout)
        status_file = runtime.path("send.json")
        tunnel = read_json(status_file)
        if tunnel is None:
            if runtime.relay_pid("send") is None and read_json(status_file) is None:
                return MigrationStatus(
                    MigrationState.FAILED,
                    error=f"the tunnel did not start: {log_tail(layout.process_log)}",
                )
            return MigrationStatus(MigrationState.SETUP)
        state = TUNNEL_STATES.get(str(tunnel["state"]), MigrationState.FAILED)
        error = str(tunnel.get("error", ""))
        if not state.finished and runtime.relay_pid("send") is None:
            # The relay writes its verdict and then exits: read again, now that it is gone.
            tunnel = read_json(status_file) or tunnel
            state = TUNNEL_STATES.get(str(tunnel["state"]), MigrationState.FAILED)
            error = str(tunnel.get("error", ""))
            if not state.finished:
                state, error = MigrationState.FAILED, error or "the migration tunnel exited"
        done = state == MigrationState.COMPLETED
        total = int(runtime.vm().get("memory", 0))
        sent = int(tunnel.get("bytes_out", 0))
        elapsed = max(1e-3, (tunnel.get("finished") or time.time()) - tunnel["started"])
        return MigrationStatus(
            state=state,
            elapsed_ms=int(elapsed * 1000),
            ram_total=total,
            ram_transferred=total if done else min(sent, total),
            ram_remaining=0 if done else max(0, total - sent),
            throughput_mbps=sent * 8 / elapsed / 1e6,
            error=error,
        )

    def migration_tune(
        self,
        layout: VmLayout,
        *,
        downtime_ms: int | None = None,
        engage_auto_converge: bool = False,
    ) -> None:
        raise HypervisorError("bhyve has no migration parameters to tune")

    def migration_postcopy(self, layout: VmLayout) -> None:
        raise HypervisorError("bhyve has no post-copy migration")

    def migration_force(self, layout: VmLayout) -> None:
        raise HypervisorError("bhyve's migration cannot be forced to finish")

    def migration_cancel(self, layout: VmLayout) -> None:
        runtime = Runtime(layout)
        pid = runtime.relay_pid("send")
        if pid is not None:
            terminate(pid)  # the stream breaks; bhyve resumes the guest before the end

    def migration_resume_source(self, layout: VmLayout) -> None:
        runtime = Runtime(layout)
        runtime.unmark("departing")
        pid = self._bhyve(layout)
        if stopped(pid):
            os.kill(pid, signal.SIGCONT)

    def measure_dirty_rate(self, layout: VmLayout, seconds: int) -> int:
        raise HypervisorError("bhyve cannot measure a guest's dirty rate")
