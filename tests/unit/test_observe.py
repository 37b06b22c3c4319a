"""Operator views over the fake-node controller: GET /v1/stats (the agents' counters joined with
names and owners), /metrics in Prometheus's text format (parsed back with prometheus_client's
parser), the event stream (filtered by account), and `corral top`'s rates and `corral events`."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral import viewmodels as vm
from corral.cli import observe as cli_observe
from corral.client import Client, Credentials
from corral.controller.feed import Feed
from corral.controller.service import Controller
from corral.node.fake import FakeNode
from corral.node.spec import InstanceStats
from tests.unit.helpers import admin
from tests.unit.test_api_network import _other
from tests.unit.test_api_rest import _error, _run
from tests.unit.test_cli_errors import Served, cli, corral, served  # noqa: F401 (fixtures)

COUNTERS = dict(
    cpu_seconds=12.5,
    memory_bytes=100 << 20,
    disk_read_bytes=4096,
    disk_write_bytes=8192,
    net_rx_bytes=1000,
    net_tx_bytes=2000,
    started_at=1_700_000_000.0,
)


async def test_stats_join_the_nodes_counters_with_names_and_owners(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    inst = await _run(api, name="web1", instance_type="cr1.nano")
    node.counters[inst["id"]] = InstanceStats(id=inst["id"], **COUNTERS)  # type: ignore[arg-type]
    resp = await api.get("/v1/stats")
    assert resp.status_code == 200, resp.text
    got = resp.json()
    [row] = got["instances"]
    assert (row["name"], row["node"], row["state"]) == ("web1", "n1", "running")
    assert {k: row[k] for k in COUNTERS} == COUNTERS
    assert (row["cpu_limit"], row["memory_limit"]) == (0.2, 128 << 20)
    [n] = got["nodes"]
    assert (n["name"], n["answered"], n["cpus"], n["instances"]) == ("n1", True, 2, 1)


async def test_another_account_sees_only_its_own_instances_and_no_nodes(
    api: httpx.AsyncClient,
) -> None:
    await _run(api, name="web1")
    async with await _other(api) as other:
        await _run(other, name="mine")
        got = (await other.get("/v1/stats")).json()
        assert got["nodes"] == []
        assert [i["name"] for i in got["instances"]] == ["mine"]
        _error(await other.get("/metrics"), 403, "forbidden")


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metrics_are_prometheus_text_with_bounded_labels(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, node: FakeNode
) -> None:
    inst = await _run(api, name="web1")
    node.counters[inst["id"]] = InstanceStats(id=inst["id"], **COUNTERS)  # type: ignore[arg-type]
    await api.get(f"/v1/instances/{inst['id']}")
    await api.get("/v1/instances/no-such-one")
    resp = await api.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    fam = _families(resp.text)
    [cpu] = fam["corral_instance_cpu_seconds"].samples
    assert cpu.name == "corral_instance_cpu_seconds_total"
    assert cpu.labels == {
        "instance": inst["id"],
        "name": "web1",
        "node": "n1",
        "account": inst["account_id"],
    }
    assert cpu.value == 12.5
    assert fam["corral_instance_network_receive_bytes"].samples[0].value == 1000
    assert fam["corral_instance_disk_written_bytes"].samples[0].value == 8192
    assert {s.labels["node"]: s.value for s in fam["corral_node_up"].samples} == {"n1": 1}
    assert {s.labels["state"]: s.value for s in fam["corral_instances"].samples} == {"running": 1}
    requests = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in fam["corral_api_requests"].samples
        if s.name.endswith("_total")
    }
    # the route template, never the id in the path: labels stay bounded
    assert requests[("GET", "/v1/instances/{ref}", "200")] >= 1
    assert requests[("GET", "/v1/instances/{ref}", "404")] >= 1
    assert requests[("POST", "/v1/instances", "202")] >= 1
    assert not [r for (_, r, _) in requests if inst["id"] in r or "no-such-one" in r]
    ops = {
        (s.labels["type"], s.labels["status"]): s.value
        for s in fam["corral_operations"].samples
        if s.name.endswith("_total")
    }
    assert ops[("instance-run", "succeeded")] >= 1, ops
    assert any(s.name.endswith("_bucket") for s in fam["corral_operation_duration_seconds"].samples)
    assert "corral_scheduler_fits" in fam and "corral_node_memory_claimed_bytes" in fam
    _error(await anonymous.get("/metrics"), 401, "unauthorized")


async def test_the_event_feed_gives_each_account_its_own_changes(ctrl: Controller) -> None:
    from corral.controller.accounts import Caller
    from tests.unit.helpers import finish, req

    feed = Feed(ctrl.store, interval=0.05)
    boss = admin(ctrl)
    other_acc = await ctrl.accounts.create("mallory")
    other = Caller(other_acc.id, "mallory", False, "")
    async with feed.subscribe(boss) as a, feed.subscribe(other) as o:
        inst, op = await ctrl.instances.run(boss, req(name="web1"))
        await finish(ctrl, op)
        mine, op2 = await ctrl.instances.run(other, req(name="mine"))
        await finish(ctrl, op2)

        async def until(sub: Any, iid: str, state: str) -> list[vm.Event]:
            seen = []
            while True:
                ev = await asyncio.wait_for(sub.queue.get(), 10)
                seen.append(ev)
                if ev.kind == "instance" and ev.id == iid and ev.data["state"] == state:
                    return seen

        boss_saw = await until(a, mine.id, "running")  # an admin sees every account's
        assert any(e.id == inst.id for e in boss_saw)
        other_saw = await until(o, mine.id, "running")
        assert {e.account_id for e in other_saw} == {other.account_id}
        assert not [e for e in other_saw if e.kind == "node" or e.id in (inst.id, op.id)]
    assert feed._task is None  # the poller stops with its last subscriber


def states_id(seen: list[vm.Event]) -> str:
    return next(e.id for e in seen if e.kind == "instance")


def test_top_rates_are_per_second_of_the_allowance() -> None:
    def stats(t: float, cpu: float, rd: int, rx: int) -> vm.Stats:
        return vm.Stats(
            nodes=[],
            instances=[
                vm.InstanceStats(
                    id="i-1",
                    name="web1",
                    account_id="a",
                    node="n1",
                    state="running",
                    time=t,
                    cpu_seconds=cpu,
                    cpu_limit=0.5,
                    disk_read_bytes=rd,
                    net_rx_bytes=rx,
                    started_at=t - 60,
                )
            ],
        )

    [r] = cli_observe.rows(stats(100.0, 10.0, 0, 0), stats(102.0, 10.5, 4096, 2000))
    assert r.cpu_pct == pytest.approx(50.0)  # 0.25 core of a 0.5-core allowance
    assert (r.disk_read_bps, r.net_rx_bps, r.uptime) == (2048.0, 1000.0, 60.0)
    [r] = cli_observe.rows(stats(100.0, 10.0, 9, 9), stats(102.0, 1.0, 0, 0))
    assert (r.cpu_pct, r.disk_read_bps) == (None, None)  # restarted QEMU: no negative rate


@pytest.mark.usefixtures("cli")
def test_cli_top_once_json_and_events(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    app: Served = request.getfixturevalue("served")
    assert corral(capsys, "run", "tiny", "--name", "topweb")[0] == 0
    code, out = corral(capsys, "top", "--once", "--json", "--interval", "0.2", "--filter", "topweb")
    assert code == 0, out
    got = json.loads(out)
    assert [r["name"] for r in got["instances"]] == ["topweb"]
    assert got["instances"][0]["state"] == "running" and got["nodes"][0]["answered"]
    code, out = corral(capsys, "top", "--once", "--interval", "0.1", "--sort", "name")
    assert code == 0 and "topweb" in out and "NODE" in out and "UPTIME" in out, out
    code, out = corral(capsys, "top", "--once", "--sort", "colour")
    assert code == 1 and "--sort 'colour'" in out
    code, out = corral(capsys, "events", "--json")
    snap = [json.loads(line) for line in out.replace("} {", "}\n{").splitlines()]
    assert any(e["kind"] == "instance" and e["data"]["name"] == "topweb" for e in snap), snap

    # follow: a stop made elsewhere arrives as instance changes
    client = Client(Credentials(app.url, app.key_id, app.secret, "test"))
    seen: list[vm.Event] = []
    started = threading.Event()

    def follow() -> None:
        for ev in client.events(snapshot=True):
            if ev is None:  # subscribed, the snapshot read: what follows are changes
                started.set()
            elif started.is_set():
                seen.append(ev)
                stopped = [e for e in seen if e.kind == "instance" and e.data["state"] == "stopped"]
                done = [
                    e
                    for e in seen
                    if e.kind == "operation"
                    and (e.data["type"], e.data["status"]) == ("instance-stop", "succeeded")
                ]
                if stopped and done:
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert started.wait(30)
    assert corral(capsys, "stop", "topweb")[0] == 0
    t.join(30)
    assert not t.is_alive(), seen
    states = [e.data["state"] for e in seen if e.kind == "instance" and e.data["name"] == "topweb"]
    assert states[-1] == "stopped"
    assert {e.data["target"] for e in seen if e.kind == "operation"} == {states_id(seen)}


@pytest.mark.usefixtures("cli")
def test_the_event_stream_refuses_bad_input_and_strangers(request: pytest.FixtureRequest) -> None:
    app: Served = request.getfixturevalue("served")
    with httpx.Client(base_url=app.url, timeout=10) as c:
        resp = c.get("/v1/events", params={"snapshot": "maybe"}, headers=_bearer(app))
        assert resp.status_code == 400 and resp.json()["error"]["field"] == "snapshot"
        assert c.get("/v1/events").status_code == 401
        c.cookies.set("corral_session", "made-up")
        assert c.get("/v1/events").status_code == 401


def _bearer(app: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.key_id}:{app.secret}"}
