"""A real Prometheus (Debian's `prometheus`) scrapes a lab agent: it runs in node2's
namespace with node2's client certificate, scrapes node1's `/metrics` over mutual TLS, and
after a real migration from node1 its HTTP API answers the migration counters."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.lab import netns
from corral.lab.image import GuestImage
from corral.lab.plan import LabNode, LabPlan
from corral.waiting import wait_for
from tests.integration.migration_helpers import migrate
from tests.integration.vm_helpers import console_lines, corral_ok, guest_args
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
LISTEN = "127.0.0.1:9090"  # inside node2's namespace: its own loopback


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cprm", 2) as plan:
        yield plan


def pki(node: LabNode) -> Path:
    return node.local_dir / "state" / "pki"


@pytest.fixture
def prometheus(lab: LabPlan, tmp_path: Path) -> Iterator[LabNode]:
    """Prometheus in node2's namespace, scraping node1 every second with node2's
    certificate; stopped by its PID afterwards."""
    node1, node2 = lab.nodes
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "corral",
                        "scheme": "https",
                        "tls_config": {
                            "ca_file": str(pki(node2) / "ca.pem"),
                            "cert_file": str(pki(node2) / "node.pem"),
                            "key_file": str(pki(node2) / "node.key"),
                        },
                        "static_configs": [{"targets": [f"{node1.migration_address.ip}:4710"]}],
                    }
                ],
            }
        )
    )
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={LISTEN}",
    ]
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(netns.in_netns(node2.netns, argv), stdout=log, stderr=log)
    try:
        yield node2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def ask(node: LabNode, path: str) -> Any:
    """GET http://LISTEN/path from inside `node`'s namespace (None: no answer yet)."""
    script = (
        "import sys, urllib.request\n"
        f"print(urllib.request.urlopen('http://{LISTEN}' + sys.argv[1], timeout=5).read().decode())"
    )
    argv = netns.in_netns(node.netns, ["python3", "-c", script, path])
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.startswith("{") else None


def query(node: LabNode, promql: str) -> list[dict[str, Any]] | None:
    from urllib.parse import quote

    answer = ask(node, f"/api/v1/query?query={quote(promql)}")
    if not answer or answer.get("status") != "success":
        return None
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_prometheus_scrapes_an_agent_and_answers_a_migration_metric(
    lab: LabPlan, prometheus: LabNode, guest_image: GuestImage
) -> None:
    node1, node2 = lab.nodes
    corral_ok(node1, "vm", "create", "prom", "--memory", "128", *guest_args(guest_image), "--start")
    wait_for(
        lambda: any("BOOTED" in ln for ln in console_lines(node1, "prom")),
        timeout=120,
        what="the guest to boot",
    )

    def target_up() -> list[dict[str, Any]] | None:
        targets = ask(prometheus, "/api/v1/targets")
        active = (targets or {}).get("data", {}).get("activeTargets", [])
        return active if active and active[0]["health"] == "up" else None

    [target] = wait_for(target_up, timeout=60, what="Prometheus to scrape node1", interval=0.5)
    assert target["scrapeUrl"] == f"https://{node1.migration_address.ip}:4710/metrics"
    code, _, err = migrate(node1, "prom", node2.name)
    assert code == 0, err

    def counted() -> list[dict[str, Any]] | None:
        found = query(prometheus, 'corral_migrations_total{outcome="succeeded"}')
        return found if found and float(found[0]["value"][1]) >= 1 else None

    [sample] = wait_for(counted, timeout=60, what="the migration in Prometheus", interval=0.5)
    assert sample["metric"]["reason"] == "none"
    assert float(sample["value"][1]) == 1
    [duration] = query(prometheus, "corral_migration_duration_seconds_count") or [{}]
    assert float(duration["value"][1]) == 1
    [vms] = query(prometheus, 'corral_vms{state="running"}') or [{}]
    assert float(vms["value"][1]) == 0  # node1 runs nothing now
    corral_ok(node2, "vm", "kill", "prom")
