"""The node's Prometheus metrics (`GET /metrics`, on the local socket and the mutual-TLS
port), computed at each scrape from what the agent already keeps: its VM records, its task
store (a migration's live numbers are its task's progress record), its registry. Nothing is
counted in memory, so an agent restart loses no count: the counters and histograms of
finished migrations are read from the tasks kept (the newest HISTORY of them).

Names follow Prometheus's conventions (base units, `_total`, `_bytes`, `_seconds`,
`_ratio`) and KubeVirt's `kubevirt_vmi_migration_*` where KubeVirt has the same quantity;
docs/metrics.md has the mapping.

Must never import: cli, lab.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from corral import __version__
from corral.tasks.states import TaskState
from corral.tasks.store import Task

if TYPE_CHECKING:
    from corral.agent.node_agent import NodeAgent

HISTORY = 10_000  # finished tasks read for the counters and histograms
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
MIGRATION_LABELS = ["vm", "source", "target", "phase"]
LIVE = (TaskState.QUEUED, TaskState.RUNNING)
OUTCOMES = {"rolled-back": "rolled_back", "failed": "failed", "recovered": "recovered"}


def snake(name: str) -> str:
    """`MigrationFailed` -> `migration_failed` (a label value from an error's class)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def migration_families(tasks: Iterable[Task], node: str) -> list[Metric]:
    """The live numbers of the migrations running from this node (their tasks' progress):
    RAM during `transfer`, the disks during `disks` (the `phase` label says which)."""
    families = {
        "total": GaugeMetricFamily(
            "corral_migration_data_total_bytes",
            "Bytes the migration's phase moves in all (RAM, or the copied disks).",
            labels=MIGRATION_LABELS,
        ),
        "done": GaugeMetricFamily(
            "corral_migration_data_processed_bytes",
            "Bytes of the phase sent so far.",
            labels=MIGRATION_LABELS,
        ),
        "remaining": GaugeMetricFamily(
            "corral_migration_data_remaining_bytes",
            "Bytes of the phase still to send.",
            labels=MIGRATION_LABELS,
        ),
        "dirty": GaugeMetricFamily(
            "corral_migration_dirty_memory_rate_bytes",
            "Bytes per second the guest dirties, as the hypervisor measures it.",
            labels=MIGRATION_LABELS,
        ),
        "rate": GaugeMetricFamily(
            "corral_migration_memory_transfer_rate_bytes",
            "Bytes per second the migration sends.",
            labels=MIGRATION_LABELS,
        ),
        "downtime": GaugeMetricFamily(
            "corral_migration_expected_downtime_seconds",
            "The downtime the hypervisor expects if it switched over now.",
            labels=MIGRATION_LABELS,
        ),
        "pass": GaugeMetricFamily(
            "corral_migration_pass",
            "The pass over the guest's memory the migration is in (1: the first).",
            labels=MIGRATION_LABELS,
        ),
        "throttle": GaugeMetricFamily(
            "corral_migration_throttle_ratio",
            "How much auto-converge slows the guest's vCPUs (0 to 1).",
            labels=MIGRATION_LABELS,
        ),
        "eta": GaugeMetricFamily(
            "corral_migration_eta_seconds",
            "Seconds the policy expects the phase still to take.",
            labels=MIGRATION_LABELS,
        ),
    }
    for task in tasks:
        if task.kind != "migration.send" or task.state not in LIVE:
            continue
        p = task.progress
        options = task.args.get("options", {})
        labels = [
            str(options.get("vm", "")),
            node,
            str(options.get("target", "")),
            str(p.get("phase", "queued")),
        ]
        mbps = p.get("mbps")
        values: dict[str, Any] = {
            "total": p.get("total"),
            "done": p.get("done"),
            "remaining": p.get("remaining"),
            "dirty": p.get("dirty_rate_bytes"),
            "rate": None if mbps is None else float(mbps) * 1e6 / 8,
            "downtime": _ms(p.get("expected_downtime_ms")),
            "pass": p.get("iteration"),
            "throttle": None if p.get("throttle_percent") is None else p["throttle_percent"] / 100,
            "eta": p.get("eta_s"),
        }
        for key, value in values.items():
            if isinstance(value, int | float):  # a number not measured yet is left out
                families[key].add_metric(labels, float(value))
    return list(families.values())


def _ms(value: Any) -> float | None:
    return float(value) / 1000 if isinstance(value, int | float) else None


def outcome_families(tasks: Iterable[Task], journal_states: dict[str, str]) -> list[Metric]:
    """Counters of finished migrations from this node by outcome and reason, and histograms
    of the successful ones' downtime and total time. `journal_states`: migration id -> the
    journal's final state (it tells a rollback from a failure)."""
    counts: Counter[tuple[str, str]] = Counter()
    downtimes: list[float] = []
    durations: list[float] = []
    for task in tasks:
        if task.kind != "migration.send" or not task.state.finished:
            continue
        if task.state == TaskState.SUCCEEDED:
            counts["succeeded", "none"] += 1
            result = task.result or {}
            if isinstance(result.get("downtime_ms"), int | float):
                downtimes.append(result["downtime_ms"] / 1000)
            if isinstance(result.get("total_s"), int | float):
                durations.append(float(result["total_s"]))
            continue
        state = journal_states.get(str(task.args.get("migration_id")), "failed")
        outcome = OUTCOMES.get(state, "failed")
        if task.state == TaskState.CANCELLED:
            reason = "cancelled"
        elif task.state == TaskState.INTERRUPTED:
            reason = "agent_stopped"
        else:
            reason = snake(task.error_type or "error")
        counts[outcome, reason] += 1
    total = CounterMetricFamily(
        "corral_migrations",
        "Migrations from this node that ended, by outcome (succeeded, rolled_back: the VM"
        " runs here again, failed, recovered) and reason (the error's kind).",
        labels=["outcome", "reason"],
    )
    for (outcome, reason), n in sorted(counts.items()):
        total.add_metric([outcome, reason], n)
    return [
        total,
        _histogram(
            "corral_migration_downtime_seconds",
            "The guest's pause at switchover, as the hypervisor measured it (successes).",
            downtimes,
            DOWNTIME_BUCKETS,
        ),
        _histogram(
            "corral_migration_duration_seconds",
            "A successful migration's total time, preflight to cleanup.",
            durations,
            DURATION_BUCKETS,
        ),
    ]


def _histogram(
    name: str, doc: str, values: list[float], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    buckets = [(str(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(values))))
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets, sum_value=sum(values))
    return family


class NodeCollector(Collector):
    """Everything /metrics says about one node, read at each scrape."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        info = GaugeMetricFamily(
            "corral_node_info", "This node (always 1).", labels=["node", "version", "hypervisor"]
        )
        info.add_metric([agent.name, __version__, agent.driver.name], 1)
        yield info
        yield GaugeMetricFamily(
            "corral_node_draining", "1 while the node is in maintenance.", value=int(agent.draining)
        )
        yield self._vms()
        tasks = agent.tasks.recent(limit=HISTORY)
        yield self._tasks(tasks)
        yield from self._peers()
        yield from migration_families(tasks, agent.name)
        states = {
            str(row[0]): str(row[1])
            for row in agent.db.query(
                "SELECT id, state FROM migrations WHERE source = ?", (agent.name,)
            )
        }
        yield from outcome_families(tasks, states)

    def _vms(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "corral_vms", "VMs this node owns, by the state observed now.", labels=["state"]
        )
        counts = Counter(
            str(vm.get("observed") or vm["state"])
            for vm in self.agent.vms.describe_all()
            if vm["owner"] == self.agent.name
        )
        for state in sorted({"running", "stopped", *counts}):
            family.add_metric([state], counts.get(state, 0))
        return family

    @staticmethod
    def _tasks(tasks: list[Task]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "corral_tasks",
            "This node's tasks (the newest kept), by kind and state.",
            labels=["kind", "state"],
        )
        for (kind, state), n in sorted(Counter((t.kind, t.state.value) for t in tasks).items()):
            family.add_metric([kind, state], n)
        return family

    def _peers(self) -> Iterator[GaugeMetricFamily]:
        agent = self.agent
        age = GaugeMetricFamily(
            "corral_peer_heartbeat_age_seconds",
            "Seconds since this node last knew each member alive (docs/metrics.md).",
            labels=["peer"],
        )
        online = GaugeMetricFamily(
            "corral_peer_online",
            "1 when the member answered within the offline time.",
            labels=["peer"],
        )
        now = time.time()
        for node in agent.registry.list() if agent.pki.member else []:
            if node.name == agent.name:
                continue
            if node.last_seen is not None:
                age.add_metric([node.name], max(0.0, now - node.last_seen))
            online.add_metric([node.name], int(node.online(now, agent.settings.offline_after)))
        yield age
        yield online
        if agent.etcd is not None:  # --state etcd: whether this node can agree, and its lease
            state = agent.etcd.state
            reachable = GaugeMetricFamily(
                "corral_etcd_reachable",
                "1 when this node's last look at etcd found a majority (--state etcd).",
            )
            reachable.add_metric([], int(state.reachable))
            lease = GaugeMetricFamily(
                "corral_etcd_lease_alive",
                "1 while this node's etcd lease is alive by its own clock (--state etcd).",
            )
            lease.add_metric([], int(agent.etcd.lease_valid()))
            yield reachable
            yield lease


def node_registry(agent: NodeAgent) -> CollectorRegistry:
    """A registry of its own per agent (tests run several agents in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(agent))
    return registry
