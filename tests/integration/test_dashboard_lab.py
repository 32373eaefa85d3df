"""The dashboard (`corral dashboard`) over a two-node lab with real agents: its pages, its
refusals (the API's reasons, never a traceback; a form not from the dashboard), and a
headless Chromium (Debian's, driven by selenium and chromium-driver) that sees both nodes,
starts a migration from the page, sees its progress change without a reload, and then sees
the VM on the other node. Screenshots go to the test's directory (and to docs/images/ when
CORRAL_SCREENSHOTS=docs)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from corral.client import AgentClient
from corral.dashboard.app import dashboard_app
from corral.lab.agents import agent_socket
from corral.lab.image import GuestImage
from corral.lab.plan import LabPlan
from corral.waiting import wait_for
from tests.integration.vm_helpers import console_lines, corral_json, corral_ok, guest_args
from tests.lab_cluster import running_cluster

pytestmark = [pytest.mark.lab, pytest.mark.qemu]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPlan]:
    with running_cluster(tmp_path_factory, "cdsh", 2) as plan:
        yield plan


@pytest.fixture(scope="module")
def dashboard(lab: LabPlan) -> Iterator[str]:
    """The dashboard on a free loopback port, talking to node1's agent."""
    socket_path = agent_socket(lab.nodes[0])
    app = dashboard_app(lambda node: AgentClient(socket_path=socket_path, node=node))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="the dashboard to listen")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no form token on the page"
    return found.group(1)


def test_the_pages_show_the_cluster_and_refusals_show_the_apis_reasons(
    lab: LabPlan, dashboard: str, guest_image: GuestImage
) -> None:
    node1 = lab.nodes[0]
    corral_ok(node1, "vm", "create", "idle", "--memory", "64", *guest_args(guest_image))
    with httpx.Client(base_url=dashboard, timeout=60) as web:
        home = web.get("/")
        assert home.status_code == 200
        for name in ("node1", "node2", "idle"):
            assert f'data-node="{name}"' in home.text or f'data-vm="{name}"' in home.text
        token = csrf(home.text)
        # a form that is not from this dashboard
        assert web.post("/vms/idle/start", data={}).status_code == 403
        # the API refuses: a plan for a stopped VM lists preflight's reasons
        plan = web.get("/vms/idle/migrate", params={"target": "node2"})
        assert plan.status_code == 200
        assert "vm-not-running" in plan.text
        assert 'id="confirm"' not in plan.text
        # an action the API refuses: the message, no traceback
        missing = web.post("/vms/nope/start", data={"csrf": token})
        assert missing.status_code == 404
        assert "nope" in missing.text
        assert "Traceback" not in missing.text
        bad = web.post("/vms/bad name/start", data={"csrf": token})
        assert bad.status_code == 422
        assert "a name (letters, digits" in bad.text
        tasks = web.get("/tasks", params={"node": "node1"})
        assert tasks.status_code == 200
        assert "vm.start" not in tasks.text  # nothing was started
    corral_ok(node1, "vm", "delete", "idle")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=opts)
    yield driver
    driver.quit()


def shot(browser: Any, tmp_path: Path, name: str) -> None:
    browser.save_screenshot(str(tmp_path / f"{name}.png"))
    if os.environ.get("CORRAL_SCREENSHOTS") == "docs":
        DOCS_IMAGES.mkdir(exist_ok=True)
        browser.save_screenshot(str(DOCS_IMAGES / f"dashboard-{name}.png"))


def test_a_migration_started_and_followed_in_a_browser(
    lab: LabPlan, dashboard: str, browser: Any, guest_image: GuestImage, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    node1 = lab.nodes[0]
    corral_ok(
        node1,
        "vm",
        "create",
        "web",
        "--memory",
        "512",
        *guest_args(guest_image, dirty_mib=16),
        "--start",
    )
    wait_for(
        lambda: any("BOOTED" in ln for ln in console_lines(node1, "web")),
        timeout=120,
        what="the guest to boot",
    )
    browser.get(dashboard + "/")
    nodes = [
        e.get_attribute("data-node")
        for e in browser.find_elements(By.CSS_SELECTOR, "#nodes tr[data-node]")
    ]
    assert nodes == ["node1", "node2"]
    shot(browser, tmp_path, "cluster")
    browser.find_element(By.CSS_SELECTOR, 'tr[data-vm="web"] a.button').click()
    Select(browser.find_element(By.NAME, "target")).select_by_value("node2")
    browser.find_element(By.CSS_SELECTOR, "#pick button").click()
    # The plan before confirming (the page asks the target: wait for it, do not race it).
    plan = wait_for(
        lambda: browser.find_elements(By.ID, "plan") or None, timeout=60, what="the plan"
    )
    assert plan[0].is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#confirm button").click()
    wait_for(
        lambda: "/tasks/node1/" in browser.current_url or "Refused" in browser.page_source,
        timeout=60,
        what="the migration's page",
    )
    assert "/tasks/node1/" in browser.current_url, browser.page_source
    browser.execute_script("window.corralMarker = 'no reload'")
    seen: list[str] = []

    def changes() -> bool:
        # One read of the panel (htmx swaps it whole at each event).
        text, state = browser.execute_script(
            "const e = document.getElementById('live'); return [e.innerText, e.dataset.state]"
        )
        if not seen or seen[-1] != text:
            seen.append(text)
            if state == "running" and len(seen) % 4 == 0:
                shot(browser, tmp_path, "migration")  # the last one: late in the transfer
        return bool(state == "succeeded")

    wait_for(changes, timeout=300, what="the migration to succeed on the page", interval=0.2)
    assert browser.execute_script("return window.corralMarker") == "no reload"
    assert len(seen) >= 2, seen  # the panel changed while the page stayed
    assert "runs on node2 now" in seen[-1]
    browser.get(dashboard + "/")

    def owner() -> str:
        return str(
            browser.execute_script(
                "const e = document.querySelector('tr[data-vm=\"web\"] td.owner');"
                " return e ? e.innerText : ''"
            )
        )

    assert owner() == "node2"
    assert corral_json(node1, "vm", "show", "web")["owner"] == "node2"
    # The cluster page follows the cluster: a move made elsewhere shows without a reload.
    browser.execute_script("window.corralMarker = 'cluster page'")
    corral_ok(lab.nodes[1], "migrate", "web", "node1")
    wait_for(lambda: owner() == "node1", timeout=30, what="the page to show web on node1")
    assert browser.execute_script("return window.corralMarker") == "cluster page"
    corral_ok(node1, "vm", "kill", "web")


FETCH = """
import base64, ssl, sys, urllib.error, urllib.request
url, ca, password = sys.argv[1:4]
request = urllib.request.Request(url)
if password:
    token = base64.b64encode(("admin:" + password).encode()).decode()
    request.add_header("authorization", "Basic " + token)
context = ssl.create_default_context(cafile=ca)
try:
    answer = urllib.request.urlopen(request, context=context, timeout=10)
    print(answer.status, answer.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_off_loopback_the_dashboard_needs_its_password_and_serves_https(
    lab: LabPlan, tmp_path: Path
) -> None:
    """`corral dashboard --listen ADDRESS` in node1's namespace, asked from node2's: HTTPS
    with node1's certificate (checked against the cluster CA), 401 without the password."""
    import subprocess
    import sys

    from corral.lab import netns

    node1, node2 = lab.nodes
    pki = node1.local_dir / "state" / "pki"
    address = f"{node1.migration_address.ip}:8710"
    refused = subprocess.run(
        [sys.executable, "-m", "corral", "dashboard", "--listen", address],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "needs a password" in refused.stderr
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    argv = [sys.executable, "-m", "corral", "dashboard", "--listen", address]
    argv += ["--password-file", str(password), "--pki", str(pki)]
    env = dict(os.environ, CORRAL_SOCKET=str(agent_socket(node1)))
    server = subprocess.Popen(netns.in_netns(node1.netns, argv), env=env)
    try:

        def fetch(secret: str) -> str | None:
            out = subprocess.run(
                netns.in_netns(
                    node2.netns,
                    [
                        sys.executable,
                        "-c",
                        FETCH,
                        f"https://{address}/",
                        str(pki / "ca.pem"),
                        secret,
                    ],
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            return out.stdout if out.returncode == 0 and out.stdout else None

        assert wait_for(lambda: fetch(""), timeout=30, what="the dashboard over HTTPS").startswith(
            "401"
        )
        page = fetch("s3cret")
        assert page is not None
        assert page.startswith("200")
        assert 'data-node="node2"' in page
    finally:
        server.terminate()
        server.wait(10)
