"""What a finished migration reports: its times, bytes and stream, the policy's actions and,
with local disks, the copy's own bytes and time (the task's result and the CLI's table).

Must never import: agent, cli, lab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.hypervisors.base import MigrationStatus

if TYPE_CHECKING:
    from corral.migration.orchestrator import SourceMigration


def summarize(m: SourceMigration, final: MigrationStatus, total: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "vm": m.vm,
        "source": m.services.node,
        "target": m.opts.target,
        "total_s": round(total, 3),
        "downtime_ms": final.downtime_ms,
        "setup_ms": final.setup_ms,
        "hypervisor": m.services.driver.name,
        "qemu_total_ms": final.elapsed_ms,  # the hypervisor's own time (the name stays)
        "bytes_sent": final.ram_transferred,
        "resident_bytes": m.resident_bytes,  # None: not measured (see estimate.py)
        "ram_total": final.ram_total,
        "iterations": final.iterations,
        "throughput_mbps": round(final.throughput_mbps, 1),
        "tls": not m.opts.insecure,
        "channels": m.opts.parallel,
        "bandwidth_mib": m.opts.bandwidth_mib,  # 0: no cap
        "policy_actions": m.actions,
        "migration_id": m.migration_id,
    }
    if m.disks is not None and m.disks.plan.copies:
        run = m.disks
        summary["disks"] = {
            "copied": len(run.plan.copies),
            "virtual_bytes": run.plan.virtual_bytes,
            "data_bytes": run.plan.data_bytes,  # allocated on the source: what is sent
            "copy_s": None if run.seconds is None else round(run.seconds, 3),
            "throughput_mbps": (
                round(run.plan.data_bytes * 8 / 1e6 / run.seconds, 1) if run.seconds else None
            ),
            "source_images_kept": m.opts.keep_source_disks,
        }
    return summary
