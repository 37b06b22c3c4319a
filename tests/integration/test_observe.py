"""Operator views against a real VM on the shared session daemon: the agent's counters (cgroup,
QMP blockstats, tap) reach `corral top`, and Debian's Prometheus server scrapes /metrics and
answers a query for the instance's CPU seconds. One tiny VM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Daemon, free_port

PROMETHEUS = "/usr/bin/prometheus"


@pytest.fixture(scope="module")
def vm(corral: Daemon) -> Iterator[str]:
    corral.cli("run", "tiny", "--name", "obs1", "--type", "cr1.micro").ok()
    # the guest answers SSH: it has booted, read its disk and used the network
    corral.ssh("obs1", "dd if=/dev/zero of=/tmp/f bs=64k count=16 2>/dev/null; sync; echo ok").ok()
    try:
        yield "obs1"
    finally:
        corral.cli("rm", "--force", "obs1")


def _top(corral: Daemon) -> dict[str, object]:
    out = corral.cli("top", "--once", "--json", "--interval", "1", "--filter", "obs1").ok().out
    [row] = json.loads(out)["instances"]
    assert isinstance(row, dict)
    return row


def test_the_agents_counters_of_a_real_vm_reach_stats_and_top(corral: Daemon, vm: str) -> None:
    stats = corral.client().stats()
    [row] = [i for i in stats.instances if i.name == vm]
    assert row.cpu_seconds is not None and row.cpu_seconds > 0
    assert row.cpu_limit == pytest.approx(0.5)  # cr1.micro: half a core
    assert row.memory_bytes is not None and row.memory_bytes > 0
    assert row.disk_write_bytes is not None and row.disk_write_bytes > 0
    assert row.net_rx_bytes is not None and row.net_tx_bytes is not None
    assert row.net_rx_bytes > 0 and row.net_tx_bytes > 0  # SSH went both ways
    assert row.started_at is not None and row.started_at <= time.time()
    node = next(n for n in stats.nodes if n.name == row.node)
    assert node.answered and node.cpus > 0 and (node.memory_total or 0) > 0
    top = _top(corral)
    assert top["state"] == "running" and top["cpu_pct"] is not None
    assert top["memory"] and top["uptime"]


@pytest.fixture(scope="module")
def prometheus(corral: Daemon) -> Iterator[str]:
    """Debian's Prometheus scraping the daemon every second (a temp config and storage, on
    loopback, ended by its pid)."""
    creds = json.loads((corral.state_dir / "admin.credentials").read_text())
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="corral-prom-") as tmp:
        target = corral.url.split("://", 1)[1]
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "corral",
                            "metrics_path": "/metrics",
                            "honor_labels": True,  # Corral's instance label, not host:port
                            "static_configs": [{"targets": [target]}],
                            "authorization": {
                                "type": "Bearer",
                                "credentials": f"{creds['access_key_id']}:"
                                f"{creds['secret_access_key']}",
                            },
                        }
                    ],
                }
            )
        )
        log = open(Path(tmp) / "prometheus.log", "w")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()


def test_prometheus_scrapes_corral_and_answers_a_query(
    corral: Daemon, vm: str, prometheus: str
) -> None:
    query = f'corral_instance_cpu_seconds_total{{name="{vm}"}}'
    deadline = time.monotonic() + 120
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline and not result:
        try:
            resp = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5)
            if resp.status_code == 200:
                result = resp.json()["data"]["result"]
        except httpx.HTTPError:
            pass  # not listening yet
        if not result:
            time.sleep(1)
    assert result, f"Prometheus never had {query}"
    [series] = result
    labels = series["metric"]
    assert isinstance(labels, dict)
    assert labels["job"] == "corral" and labels["node"] and labels["account"]
    assert str(labels["instance"]).startswith("i-")  # Corral's label wins over the target's
    value = series["value"]
    assert isinstance(value, list) and float(value[1]) > 0
    up = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=5).json()
    assert [r["value"][1] for r in up["data"]["result"]] == ["1"]


# -- the dashboard in a real browser (last: it stops the VM) ----------------------------------
CHROMIUM = "/usr/bin/chromium"
SHOTS = os.environ.get("CORRAL_SCREENSHOTS")  # a folder (e.g. docs) to keep the screenshots in


def _terminal_text(page: Any) -> str:
    return str(
        page.evaluate(
            """() => { const b = window.corralTerm ? window.corralTerm.buffer.active : null;
                 if (!b) return "";
                 const out = [];
                 for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
                 return out.join("\\n"); }"""
        )
    )


def test_the_dashboard_signs_in_maps_stops_and_opens_the_console(
    corral: Daemon, vm: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    creds = json.loads((corral.state_dir / "admin.credentials").read_text())
    iid = corral.client().instance_show(vm).id
    shots = Path(SHOTS) if SHOTS else tmp_path
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{corral.url}/ui")
            page.fill("input[name=access_key_id]", creds["access_key_id"])
            page.fill("input[name=secret_access_key]", creds["secret_access_key"])
            page.click("form#login button")
            expect(page.locator("#nav")).to_be_visible(timeout=30_000)
            expect(page.locator("form#login")).to_be_hidden()
            assert creds["secret_access_key"] not in page.content()
            # the map: the running VM inside its node's box
            pill = page.locator(f".node .inst[data-id='{iid}']")
            expect(pill).to_have_class(re.compile("state-running"), timeout=60_000)
            page.screenshot(path=str(shots / "dashboard-map.png"), full_page=True)
            # the instance page: type into the browser console, read the answer
            pill.click()
            expect(page.locator("#terminal .xterm")).to_be_visible(timeout=30_000)
            page.click("#terminal")
            deadline = time.monotonic() + 180
            page.keyboard.type("\n")
            time.sleep(1.5)
            page.keyboard.type("root\n")
            time.sleep(1.5)
            while "ui-42" not in _terminal_text(page) and time.monotonic() < deadline:
                page.keyboard.type("echo ui-$((6*7))\n")
                page.wait_for_timeout(3000)
            assert "ui-42" in _terminal_text(page), _terminal_text(page)[-2000:]
            page.screenshot(path=str(shots / "dashboard-instance.png"), full_page=True)
            # stop it from the page; the state changes without a reload (the event stream)
            page.click("button[data-act=stop]")
            expect(page.locator("#inst-state")).to_have_text("stopped", timeout=240_000)
            assert corral.client().instance_show(vm).state == "stopped"
        finally:
            browser.close()
