"""The dashboard's pure parts: rows and numbers from the API's records, the chart drawn on
the server, `corral dashboard`'s flags (off loopback only with a password), the password
check, and the vendored scripts being exactly what static/VENDORED.md pins."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from corral.cli.dashboard_command import parse_listen, read_password
from corral.client import AgentClient
from corral.dashboard.app import HERE, Pages, dashboard_app, live_events
from corral.dashboard.views import Chart, live_numbers, node_row, vm_row
from corral.errors import UserInputError


def test_a_node_row_has_its_memory_bar_and_maintenance() -> None:
    row = node_row(
        {
            "name": "node1",
            "online": True,
            "draining": True,
            "facts": {"memory_total_mib": 4096, "memory_free_mib": 1024, "vm_count": 0},
        }
    )
    assert row["used_pct"] == 75
    assert row["memory"] == "3.0 GiB used of 4.0 GiB"
    assert (row["state"], row["maintenance"]) == ("online", "drained")
    assert node_row({"name": "x", "online": False, "facts": {}})["used_pct"] is None


def test_a_vm_row_shows_its_topology_and_where_it_runs() -> None:
    vm = {
        "name": "web",
        "owner": "node2",
        "node": "node2",
        "state": "running",
        "observed": "running",
        "spec": {
            "memory_mib": 512,
            "cpu": {"count": 4, "topology": {"sockets": 2, "cores": 2, "threads": 1}},
        },
    }
    row = vm_row(vm)
    assert (row["node"], row["topology"], row["memory"]) == ("node2", "2x2x1", "512.0 MiB")


def test_live_numbers_say_what_is_not_known_yet() -> None:
    rows = dict(
        live_numbers(
            {"phase": "transfer", "iteration": 2, "done": 2**20, "total": 2**30, "mbps": 900.0}
        )
    )
    assert rows["pass"] == "2"
    assert rows["RAM sent"] == "1.0 MiB of 1.0 GiB"
    assert rows["rate"] == "900 Mbit/s"
    assert rows["expected downtime"] == "-"  # not reported yet: never 0
    disks = dict(live_numbers({"phase": "disks", "done": 0, "total": 2**20}))
    assert disks["disks copied"] == "0 B of 1.0 MiB"


def test_the_chart_draws_remaining_bytes_over_time() -> None:
    chart = Chart()
    assert chart.svg() == ""  # one point is no line
    for t, left in ((0.0, 100.0), (1.0, 50.0), (2.0, 0.0)):
        chart.add(t, left)
    chart.add(3.0, None)  # not reported: skipped
    svg = chart.svg()
    points = re.search(r'points="([^"]+)"', svg)
    assert points is not None
    assert points.group(1) == "0.0,0.0 240.0,60.0 480.0,120.0"
    assert "2.0 s" in svg


def test_the_dashboard_leaves_loopback_only_with_a_password(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:8710") == ("127.0.0.1", 8710)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("localhost:8710", "127.0.0.1:0", "127.0.0.1"):
        with pytest.raises(UserInputError):
            parse_listen(bad)
    assert read_password(None, loopback=True) is None
    with pytest.raises(UserInputError, match="needs a password"):
        read_password(None, loopback=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UserInputError, match="is empty"):
        read_password(empty, loopback=False)
    good = tmp_path / "pw"
    good.write_text("s3cret\n")
    assert read_password(good, loopback=False) == "s3cret"


def test_with_a_password_every_request_needs_it(tmp_path: Path) -> None:
    app = dashboard_app(lambda node: AgentClient(socket_path=tmp_path / "none.sock"), "s3cret")
    web = TestClient(app)
    assert web.get("/static/style.css").status_code == 401
    wrong = base64.b64encode(b"admin:nope").decode()
    assert (
        web.get("/static/style.css", headers={"authorization": f"Basic {wrong}"}).status_code == 401
    )
    right = base64.b64encode(b"admin:s3cret").decode()
    assert (
        web.get("/static/style.css", headers={"authorization": f"Basic {right}"}).status_code == 200
    )
    # no agent answers: the page says so, with no traceback
    down = web.get("/", headers={"authorization": f"Basic {right}"})
    assert down.status_code == 503
    assert "Traceback" not in down.text


def test_the_vendored_scripts_are_the_pinned_ones() -> None:
    table = (HERE / "static" / "VENDORED.md").read_text()
    pinned = dict(re.findall(r"^\| `([^`]+)` \|.*\| ([0-9a-f]{64}) \|$", table, re.M))
    assert set(pinned) == {"htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.js"}
    for name, digest in pinned.items():
        assert hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest() == digest
        assert name in (HERE / "templates" / "base.html").read_text()
    for licence in ("LICENSE.htmx", "LICENSE.htmx-ext-sse"):
        assert "Zero" in (HERE / "static" / licence).read_text()


class Feed:
    """A task's watch stream as the agent sends it (what `AgentClient.stream` yields)."""

    def __init__(self, updates: list[dict[str, object]]) -> None:
        self.updates = updates
        self.closed = False

    def stream(self, path: str, timeout: float) -> Iterator[dict[str, object]]:
        yield from self.updates

    def close(self) -> None:
        self.closed = True


def test_a_migration_streams_as_rendered_panels_until_it_finishes(tmp_path: Path) -> None:
    def update(state: str, remaining: int, action: str, result: object = None) -> dict[str, object]:
        return {
            "id": "t1",
            "kind": "migration.send",
            "state": state,
            "error": None,
            "result": result,
            "progress": {
                "phase": "transfer",
                "done": 2**30 - remaining,
                "total": 2**30,
                "remaining": remaining,
                "last_action": action,
            },
        }

    feed = Feed(
        [
            update("running", 2**29, "downtime limit 300 -> 600 ms"),
            update("running", 2**28, "auto-converge on"),
            update(
                "succeeded",
                0,
                "auto-converge on",
                {"vm": "web", "target": "node2", "total_s": 1.5, "downtime_ms": 40},
            ),
        ]
    )
    panel = Pages(lambda node: AgentClient(socket_path=tmp_path / "x")).templates.get_template(
        "live.html"
    )
    events = list(live_events(feed, "/tasks/t1/watch", panel, "node1"))  # type: ignore[arg-type]
    assert [e.split("\n", 1)[0] for e in events] == ["event: progress"] * 3 + ["event: finished"]
    assert "<polyline" in events[1]  # two points: a line
    assert "downtime limit 300 -&gt; 600 ms" in events[1]  # escaped, listed as it happened
    assert "auto-converge on" in events[1]
    assert 'data-state="succeeded"' in events[2]
    assert "web runs on node2 now" in events[2]
    assert all(line.startswith("data: ") for e in events for line in e.splitlines()[1:] if line)
    assert feed.closed
