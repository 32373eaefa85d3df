"""QEMU live migration primitives, each run on its named side (Ganeti-shaped):
destination `prepare_incoming` and `listen`; source `start`, `status`, `set_parameters`,
`start_postcopy`, `cancel`; `finalize_*` on each side. Streams use TLS with the cluster's
certificates unless the caller opts out: over one channel QEMU sends plain to a local socket
and the agent's relay (tls_relay.py) carries it, because QEMU 7.2's own TLS writes one
record per page; with multifd channels QEMU's own TLS encrypts each in its own thread.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from corral.errors import HypervisorError
from corral.hypervisors.base import MigrationState, MigrationStatus, MigrationTuning, VmLayout
from corral.hypervisors.qemu import tls_relay
from corral.hypervisors.qemu.monitor_hub import HUB
from corral.hypervisors.qemu.qmp_session import QmpSession, qmp_call
from corral.waiting import wait_for

TLS_OBJECT = "corral-tls"
AUTHZ_OBJECT = "corral-authz"
UNLIMITED = 64 * 1024**3  # QEMU has no "unlimited"; 64 GiB/s is beyond any link


def _capabilities(session: QmpSession, tuning: MigrationTuning, source: bool) -> None:
    caps = {"events": True, "multifd": tuning.multifd_channels > 1, "postcopy-ram": tuning.postcopy}
    if source:
        caps["auto-converge"] = tuning.auto_converge
    session.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": name, "state": state} for name, state in caps.items()]},
    )


def plain_stream(session: QmpSession, bandwidth: int) -> None:
    """Settings for a stream to a local file (a checkpoint): whatever an earlier migration
    in or out left (TLS credentials, parallel channels, post-copy) is reset."""
    _capabilities(session, MigrationTuning(auto_converge=False), source=True)
    session.execute("migrate-set-parameters", {"tls-creds": "", "max-bandwidth": bandwidth})


def _new_object(session: QmpSession, qom_type: str, object_id: str, **props: Any) -> str:
    """Add a QOM object, replacing one of that id left by an earlier attempt."""
    with contextlib.suppress(HypervisorError):
        session.execute("object-del", {"id": object_id})
    session.execute("object-add", {"qom-type": qom_type, "id": object_id, **props})
    return object_id


def relayed(tuning: MigrationTuning) -> bool:
    """Whether the agents' relay carries the TLS stream (one channel), or QEMU's own TLS
    does (`--parallel N`: QEMU encrypts each multifd channel in its own thread, where the
    relay's channels would share one Python process; measured in bench/throughput.py)."""
    return tuning.tls_dir is not None and tuning.multifd_channels <= 1


def _qemu_tls(session: QmpSession, tuning: MigrationTuning, endpoint: str) -> dict[str, Any]:
    """QEMU's own TLS for a multifd stream: the cluster's certificates in a
    `tls-creds-x509` object; the target also an `authz-simple` for the source's CN."""
    if tuning.tls_dir is None or relayed(tuning):
        return {"tls-creds": ""}
    creds = _new_object(
        session,
        "tls-creds-x509",
        TLS_OBJECT,
        dir=str(tuning.tls_dir),
        endpoint=endpoint,
        **{"verify-peer": True},
    )
    params: dict[str, Any] = {"tls-creds": creds}
    if endpoint == "server" and tuning.tls_peer_name:
        # Only the source node's certificate may feed this QEMU, not any the CA signed.
        identity = f"CN={tuning.tls_peer_name}"
        params["tls-authz"] = _new_object(session, "authz-simple", AUTHZ_OBJECT, identity=identity)
    if endpoint == "client" and tuning.tls_hostname:
        params["tls-hostname"] = tuning.tls_hostname
    return params


def _stream_uri(
    layout: VmLayout, address: str, port: int, tuning: MigrationTuning, endpoint: str
) -> str:
    """Where QEMU listens ("server") or sends ("client"): the target's address, or with TLS
    over one channel the local socket of this side's relay, opened now."""
    if not relayed(tuning) or tuning.tls_dir is None:
        return f"tcp:{address}:{port}"
    if endpoint == "server":
        return tls_relay.open_target(layout, address, port, tuning.tls_dir, tuning.tls_peer_name)
    return tls_relay.open_source(layout, address, port, tuning.tls_dir, tuning.tls_hostname)


def listen(layout: VmLayout, address: str, port: int, tuning: MigrationTuning) -> str:
    """Destination: configure the incoming QEMU and listen on address:port (with TLS over
    one channel: the agent's relay listens there and QEMU on a local socket, tls_relay.py)."""
    with QmpSession(layout.control_socket) as qmp:
        _capabilities(qmp, tuning, source=False)
        params: dict[str, Any] = _qemu_tls(qmp, tuning, "server")
        if tuning.multifd_channels > 1:
            params["multifd-channels"] = tuning.multifd_channels
        qmp.execute("migrate-set-parameters", params)
        uri = _stream_uri(layout, address, port, tuning, "server")
        qmp.execute("migrate-incoming", {"uri": uri})
    return uri


def start(layout: VmLayout, address: str, port: int, tuning: MigrationTuning) -> None:
    """Source: configure and start sending to address:port (with TLS over one channel:
    through the agent's relay, tls_relay.py)."""
    with QmpSession(layout.control_socket) as qmp:
        _capabilities(qmp, tuning, source=True)
        params: dict[str, Any] = {
            **_qemu_tls(qmp, tuning, "client"),
            "max-bandwidth": tuning.bandwidth_bytes or UNLIMITED,
            "downtime-limit": tuning.downtime_ms,
            # Auto-converge armed but quiet until the policy engages it (see policy.py).
            "throttle-trigger-threshold": 100,
            "cpu-throttle-initial": 20,
            "cpu-throttle-increment": 10,
        }
        if tuning.multifd_channels > 1:
            params["multifd-channels"] = tuning.multifd_channels
        qmp.execute("migrate-set-parameters", params)
        qmp.execute("migrate", {"uri": _stream_uri(layout, address, port, tuning, "client")})


# QEMU's MigrationStatus (qapi/migration.json) in corral's words. The device-state phase,
# the pause before switchover and waiting for unplug are still the pre-copy pass; every
# post-copy phase is post-copy; COLO is not used.
QEMU_STATES: dict[str, MigrationState] = {
    "none": MigrationState.NONE,
    "setup": MigrationState.SETUP,
    "active": MigrationState.ACTIVE,
    "pre-switchover": MigrationState.ACTIVE,
    "device": MigrationState.ACTIVE,
    "wait-unplug": MigrationState.ACTIVE,
    "postcopy-active": MigrationState.POSTCOPY,
    "postcopy-paused": MigrationState.POSTCOPY,
    "postcopy-recover-setup": MigrationState.POSTCOPY,
    "postcopy-recover": MigrationState.POSTCOPY,
    "cancelling": MigrationState.CANCELLING,
    "cancelled": MigrationState.CANCELLED,
    "completed": MigrationState.COMPLETED,
    "failed": MigrationState.FAILED,
    "colo": MigrationState.FAILED,
}


def migration_state(qemu_status: str) -> MigrationState:
    """corral's name for QEMU's migration status (an unknown one counts as failed)."""
    return QEMU_STATES.get(qemu_status, MigrationState.FAILED)


def parse_status(info: dict[str, Any]) -> MigrationStatus:
    """A MigrationStatus from QMP `query-migrate`."""
    ram = info.get("ram", {})
    return MigrationStatus(
        state=migration_state(str(info.get("status", "none"))),
        elapsed_ms=int(info.get("total-time", 0)),
        ram_total=int(ram.get("total", 0)),
        ram_transferred=int(ram.get("transferred", 0)),
        ram_remaining=int(ram.get("remaining", 0)),
        throughput_mbps=float(ram.get("mbps", 0.0)),
        dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)),
        page_size=int(ram.get("page-size", 4096)) or 4096,
        iterations=int(ram.get("dirty-sync-count", 0)),
        expected_downtime_ms=int(info.get("expected-downtime", 0)),
        downtime_ms=int(info["downtime"]) if "downtime" in info else None,
        setup_ms=int(info["setup-time"]) if "setup-time" in info else None,
        throttle_percent=int(info.get("cpu-throttle-percentage", 0)),
        error=str(info.get("error-desc", "")),
    )


def status(layout: VmLayout) -> MigrationStatus:
    """Source: the migration as QEMU sees it now (asked on the status monitor, whose kept
    connection then waits for QEMU's next event: `wait_change`)."""
    info = HUB.query(layout.status_socket, "query-migrate")
    if info.get("status") == "completed" and not info.get("total-time"):
        info = final_counters(layout)
    status = parse_status(info)
    if status.state.finished:
        completed = status.state == MigrationState.COMPLETED
        relay_error = tls_relay.error(layout)
        if not completed and relay_error and relay_error not in status.error:
            status = replace(status, error=f"{relay_error} (QEMU: {status.error})")
        tls_relay.stop(layout, force=not completed)
    return status


def final_counters(layout: VmLayout) -> dict[str, Any]:
    """The completed migration's counters once QEMU has computed them. QEMU 7.2 sets the
    state to completed (and sends the MIGRATION event) before it computes the total time,
    the downtime and the rate (`migration_completion` runs before
    `migration_calculate_complete` in migration/migration.c; later QEMUs swap the two):
    read at once, they are 0. They follow within milliseconds."""

    def computed() -> dict[str, Any] | None:
        info: dict[str, Any] = HUB.query(layout.status_socket, "query-migrate")
        return info if info.get("total-time") else None

    return wait_for(computed, timeout=10, what="QEMU's final migration counters", interval=0.005)


def set_parameters(layout: VmLayout, params: dict[str, Any]) -> None:
    """Source: change limits during the migration (downtime, bandwidth, throttling)."""
    qmp_call(layout.control_socket, "migrate-set-parameters", params)


def start_postcopy(layout: VmLayout) -> None:
    qmp_call(layout.control_socket, "migrate-start-postcopy")


def pause_source(layout: VmLayout) -> None:
    """Source: stop the vCPUs, so the rest is copied without new dirt (forced completion)."""
    qmp_call(layout.control_socket, "stop")


def cancel(layout: VmLayout) -> None:
    """Source: abort the migration; QEMU keeps the VM where it is."""
    with contextlib.suppress(HypervisorError):
        qmp_call(layout.control_socket, "migrate_cancel")
    tls_relay.stop(layout, force=True)


def resume_source(layout: VmLayout) -> None:
    """Source, after a failed or cancelled migration: make sure the VM runs."""
    state = HUB.query(layout.status_socket, "query-status")["status"]
    if state != "running":
        qmp_call(layout.control_socket, "cont")


def incoming_state(layout: VmLayout) -> str:
    """Destination: QEMU's run state (inmigrate while receiving)."""
    return str(HUB.query(layout.status_socket, "query-status")["status"])


def wait_change(layout: VmLayout, timeout: float) -> None:
    """Either side: return at QEMU's next event after the last status query (a migration
    state change, a new pass, the target resuming), or after `timeout` seconds."""
    HUB.wait_event(layout.status_socket, timeout)


def calc_dirty_rate(layout: VmLayout, seconds: int = 1) -> int:
    """Source: measure the guest's dirty rate with QEMU's calc-dirty-rate, in MiB/s."""
    qmp_call(layout.control_socket, "calc-dirty-rate", {"calc-time": seconds})

    def measured() -> int | None:
        info = HUB.query(layout.status_socket, "query-dirty-rate")
        return int(info.get("dirty-rate", 0)) if info.get("status") == "measured" else None

    return wait_for(measured, timeout=seconds + 10, what="calc-dirty-rate", interval=0.1)
