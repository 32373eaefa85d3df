"""What `migrate --plan` predicts: how long the migration should take, from numbers
measured now and from what the past migrations to the same node achieved.

The time of a migration is a fixed part (the target's hypervisor started, the deferred
task, the switchover, the source stopped) plus the copy. The copy sends the pages the guest
has touched (what the host holds of its RAM now: untouched pages go as zero pages, at almost
no cost), then again what it dirtied meanwhile, pass after pass. Both the rate the stream
gets and the fixed part are learnt from the past migrations from this node to the target
with the same stream (TLS or not): the hypervisor's own throughput is several times what a
probe from the agent sees (the probe runs Python's TLS; QEMU's stream does not). With no
past migration to learn from, the link probe gives the rate and the fixed part is unknown:
it is left out, and the answer says so. A number that was not measured is never guessed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from corral.migration.policy import PolicyLimits, converges

HISTORY = 10  # the last N past migrations to the same node count


@dataclass(frozen=True)
class PastMigration:
    """What one finished migration to the target achieved (its task's summary)."""

    total_s: float
    hypervisor_ms: int  # the hypervisor's own time, setup to completion
    bytes_sent: int
    vm: str = ""
    # Neither capped (--bandwidth) nor slowed by the policy (throttled, paused): its rate
    # is the link's and the hypervisor's, not a limit's.
    free: bool = True
    disk_s: float = 0.0  # the copy of its local disks (--with-local-disks), before the RAM
    disk_bytes: int = 0  # the data that copy sent
    resident_bytes: int | None = None  # what the host held of the guest's RAM at its start

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> PastMigration | None:
        try:
            disks = summary.get("disks") or {}
            return cls(
                float(summary["total_s"]),
                int(summary["qemu_total_ms"]),
                int(summary["bytes_sent"]),
                str(summary.get("vm", "")),
                not summary.get("bandwidth_mib") and not summary.get("policy_actions"),
                float(disks.get("copy_s") or 0.0),
                int(disks.get("data_bytes") or 0),
                int(summary["resident_bytes"]) if summary.get("resident_bytes") else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def disk_bytes_per_s(self) -> float | None:
        return self.disk_bytes / self.disk_s if self.disk_s > 0 and self.disk_bytes else None

    @property
    def stream_bytes_per_s(self) -> float | None:
        """The rate in the plan's own unit: resident bytes copied per second of the
        hypervisor's time. The plan's "to send" is what the host holds of the guest's RAM,
        and part of that is zero pages, which go as headers: an idle test guest holds 128
        MB and its migration sends 85 MB. Counting the bytes sent instead made every plan
        of a guest that holds zero pages long by that ratio (a VM's own past migration was
        predicted 1.5 times slower than it ran). Migrations recorded before the resident
        bytes were: the bytes sent."""
        if self.hypervisor_ms <= 0:
            return None
        copied = self.bytes_sent
        if self.resident_bytes:
            copied = max(copied, self.resident_bytes)
        return copied / (self.hypervisor_ms / 1000)

    @property
    def fixed_s(self) -> float:
        return max(0.0, self.total_s - self.hypervisor_ms / 1000 - self.disk_s)


def relevant(past: list[PastMigration], vm: str) -> tuple[list[PastMigration], str]:
    """The past migrations to learn from, and how to name them, in this order: this VM's
    own free-running ones (its size and workload; no cap, no throttling), any VM's free
    ones, this VM's capped or throttled ones, any."""
    own = [p for p in past if vm and p.vm == vm]
    slowed = ", slowed by a cap or the policy"
    for chosen, whose in (
        ([p for p in own if p.free], "of this VM"),
        ([p for p in past if p.free], "of any VM"),
        (own, "of this VM"),
        (past, "of any VM"),
    ):
        if chosen:
            kept = chosen[:HISTORY]
            note = "" if all(p.free for p in kept) else slowed
            return kept, f"{len(kept)} past migration(s) {whose} to this node{note}"
    return [], "no past migration"


def learnt(past: list[PastMigration]) -> tuple[float | None, float | None]:
    """The median stream rate (bytes/s) and fixed part (s) of the last migrations."""
    recent = past[:HISTORY]
    rates = [r for p in recent if (r := p.stream_bytes_per_s) is not None and r > 0]
    fixed = [p.fixed_s for p in recent]
    return (
        statistics.median(rates) if rates else None,
        statistics.median(fixed) if fixed else None,
    )


def estimate(
    ram_bytes: int,
    limits: PolicyLimits,
    *,
    resident_bytes: int | None,
    dirty_bytes_per_s: float | None,
    link_bytes_per_s: float | None,
    bandwidth_cap_bytes_per_s: float = 0,
    past: list[PastMigration] | None = None,
    vm: str = "",
) -> dict[str, object]:
    """The plan's estimate for `vm`: the rate the stream should get and where that comes
    from, whether pre-copy converges, and the expected time (the copy, plus the fixed part
    when past migrations tell it)."""
    chosen, basis = relevant(past or [], vm)
    rate, fixed = learnt(chosen)
    if rate is None:
        rate, basis = link_bytes_per_s, "the link probe (no past migration to this node)"
    usable = [x for x in (rate or 0, bandwidth_cap_bytes_per_s) if x > 0]
    bandwidth = min(usable) if usable else 0.0
    to_send = ram_bytes if resident_bytes is None else min(ram_bytes, resident_bytes)
    found: dict[str, object] = {
        "bandwidth_bytes_per_s": round(bandwidth),
        "basis": basis,
        "to_send_bytes": to_send,
        "fixed_s": None if fixed is None else round(fixed, 2),
    }
    if bandwidth and dirty_bytes_per_s is not None:
        ok, copy_s = converges(to_send, dirty_bytes_per_s, bandwidth, limits.max_downtime_ms)
        found["converges"] = ok
        found["copy_s"] = None if copy_s is None else round(copy_s, 2)
        total = None if copy_s is None else copy_s + (fixed or 0.0)
        found["expected_s"] = None if total is None else round(total, 2)
        found["within_timeout"] = ok and total is not None and total <= limits.completion_timeout_s
    return found


def disk_estimate(
    data_bytes: int,
    disks: int,
    *,
    link_bytes_per_s: float | None,
    bandwidth_cap_bytes_per_s: float = 0,
    past: list[PastMigration] | None = None,
) -> dict[str, object]:
    """The copy of `disks` local disks holding `data_bytes` of data, before the RAM: at the
    median rate past disk copies to this node achieved, else at the link probe's."""
    rates = [r for p in (past or [])[:HISTORY] if (r := p.disk_bytes_per_s)]
    if rates:
        rate: float | None = statistics.median(rates)
        basis = f"{len(rates)} past disk copies to this node"
    else:
        rate, basis = link_bytes_per_s, "the link probe (no past disk copy to this node)"
    usable = [x for x in (rate or 0, bandwidth_cap_bytes_per_s) if x > 0]
    bandwidth = min(usable) if usable else 0.0
    return {
        "disks": disks,
        "data_bytes": data_bytes,
        "bandwidth_bytes_per_s": round(bandwidth),
        "basis": basis,
        "copy_s": round(data_bytes / bandwidth, 2) if bandwidth else None,
    }
