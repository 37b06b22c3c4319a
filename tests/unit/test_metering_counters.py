"""Metering of what instances use (CPU-seconds, network bytes) from the nodes' counters: a
scripted sequence of readings with every kind of reset (agent restart, QEMU restart, tap
remade, the instance moved to another node, an unreadable counter, an old cgroup's counter)
counts each second and byte once; the records survive a restart of the daemon; usage, the
bill and /v1/usage show them."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller import metering
from corral.controller.metering import Counters, Used, advance
from corral.controller.service import Controller
from corral.node.spec import InstanceStats, NodeStats
from corral.store.models import Instance
from tests.unit.helpers import admin, finish, reload, req

pytestmark = pytest.mark.postgres

T0 = 1_000_000.0  # the first QEMU's start (epoch seconds)


def _r(cpu: float | None, rx: int | None, tx: int | None, started: float = T0, node: str = "n1"):
    return Counters(node, started, cpu, rx, tx)


def test_a_scripted_sequence_of_readings_counts_each_second_and_byte_once() -> None:
    steps = [
        # (reading, read at, expected use)
        (_r(10.0, 1000, 500), T0 + 100, Used(10.0, 1000, 500)),  # first: all since start
        (_r(25.0, 3000, 900), T0 + 160, Used(15.0, 2000, 400)),  # growth
        # the agent restarted and re-adopted the same QEMU: the counters go on
        (_r(25.0, 3000, 900), T0 + 220, Used(0.0, 0, 0)),
        (_r(26.5, 3100, 950), T0 + 280, Used(1.5, 100, 50)),
        # a counter unreadable this time: nothing counted, nothing forgotten
        (_r(None, None, None), T0 + 340, Used(0.0, 0, 0)),
        (_r(30.0, 3300, 1000), T0 + 400, Used(3.5, 200, 50)),
        # the QEMU restarted: a new cgroup counts from 0; the tap (and its bytes) lived on
        (_r(2.0, 3500, 1100, started=T0 + 500), T0 + 510, Used(2.0, 200, 100)),
        (_r(4.0, 3600, 1200, started=T0 + 500), T0 + 570, Used(2.0, 100, 100)),
        # the tap was made again (an agent restart after a node reboot): its bytes restart
        (_r(5.0, 40, 30, started=T0 + 500), T0 + 630, Used(1.0, 40, 30)),
        # moved to another node (migration, evacuation): everything restarts there
        (_r(0.5, 10, 5, started=T0 + 700, node="n2"), T0 + 705, Used(0.5, 10, 5)),
        (_r(1.5, 20, 15, started=T0 + 700, node="n2"), T0 + 765, Used(1.0, 10, 10)),
    ]
    last = None
    total = Used()
    for reading, at, expected in steps:
        last, used = advance(last, reading, at)
        assert used == expected, (reading, used, expected)
        total = Used(
            total.cpu_seconds + used.cpu_seconds,
            total.net_rx_bytes + used.net_rx_bytes,
            total.net_tx_bytes + used.net_tx_bytes,
        )
    assert total == Used(36.5, 3660, 1245)


def test_a_qemu_whose_start_time_cannot_be_read_is_not_counted_again_each_time() -> None:
    last, used = advance(None, _r(10.0, 100, 100, started=None), T0 + 60)  # type: ignore[arg-type]
    assert used == Used(10.0, 100, 100)
    last, used = advance(last, _r(12.0, 150, 100, started=None), T0 + 120)  # type: ignore[arg-type]
    assert used == Used(2.0, 50, 0)
    # known again: the same QEMU (the counter did not go down)
    last, used = advance(last, _r(13.0, 150, 100), T0 + 180)
    assert used == Used(1.0, 0, 0)
    # a restart with its start unknown shows as a counter that went down
    _, used = advance(last, _r(0.5, 150, 100, started=None), T0 + 240)  # type: ignore[arg-type]
    assert used.cpu_seconds == 0.5


def test_a_new_qemus_counter_is_believed_only_as_far_as_time_allows() -> None:
    """A QEMU that died while its agent was down leaves its cgroup; the next QEMU's counter
    starts from the old total. It is not taken as new use beyond what the new QEMU could have
    used since it started."""
    last, _ = advance(None, _r(500.0, 0, 0), T0 + 1000)
    _, used = advance(last, _r(510.0, 0, 0, started=T0 + 2000), T0 + 2010)
    assert used.cpu_seconds == pytest.approx(10 * metering.CORES_PER_VCPU_MAX)


async def _running(ctrl: Controller, itype: str, name: str) -> tuple[Instance, str]:
    """An instance launched and running, and its node's id."""
    inst, op = await ctrl.instances.run(admin(ctrl), req(instance_type=itype, name=name))
    await finish(ctrl, op)
    row = await reload(ctrl, inst.id)
    assert row.node_id
    return row, row.node_id


async def test_meter_records_usage_once_across_a_restart_and_bills_it(ctrl: Controller) -> None:
    me = admin(ctrl)
    inst, node_id = await _running(ctrl, "cr1.nano", "m1")

    def stats(cpu: float, rx: int, tx: int, started: float = T0) -> NodeStats:
        return NodeStats(
            time=started + 3600,
            cpus=2,
            cpu_seconds=0,
            load1=0,
            memory_total=1,
            memory_available=1,
            instances=[
                InstanceStats(
                    id=inst.id,
                    cpu_seconds=cpu,
                    net_rx_bytes=rx,
                    net_tx_bytes=tx,
                    started_at=started,
                ),
                # an instance the store does not place on this node: not metered
                InstanceStats(id="i-elsewhere", cpu_seconds=99.0, started_at=started),
            ],
        )

    async with ctrl.store.write() as s:
        assert await metering.meter(s, node_id, stats(100.0, 1 << 30, 1 << 29)) == Used(
            100.0, 1 << 30, 1 << 29
        )
    # a daemon restart re-reads the same counters: the meter is in the store, nothing doubles
    async with ctrl.store.write() as s:
        assert await metering.meter(s, node_id, stats(100.0, 1 << 30, 1 << 29)) == Used()
    async with ctrl.store.write() as s:
        assert await metering.meter(s, node_id, stats(3700.0, 2 << 30, 1 << 30)) == Used(
            3600.0, 1 << 30, 1 << 29
        )
    # the node that does not run it has no say
    async with ctrl.store.write() as s:
        assert await metering.meter(s, "another-node", stats(9e9, 9 << 40, 9 << 40)) == Used()

    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    _a, _s, _e, lines = await ctrl.metering.usage(me, None, start, end)
    used = {
        (u.kind, u.state): (u.quantity, len(u.resources))
        for u in lines
        if u.kind in ("cpu", "network")
    }
    assert used == {
        ("cpu", "used"): (3700.0, 1),
        ("network", "in"): (float(2 << 30), 1),
        ("network", "out"): (float(1 << 30), 1),
    }
    # instance-seconds are untouched by the counters' records (same resource id)
    assert any(u.kind == "instance" and u.state == "running" and u.seconds > 0 for u in lines)

    bill = await ctrl.metering.bill(me, None, f"{dt.datetime.now(dt.UTC):%Y-%m}")
    by = {(x.kind, x.state): x for x in bill.lines}
    cpu = by["cpu", "used"]
    assert cpu.unit == "core-hour" and cpu.quantity == pytest.approx(3700 / 3600)
    out = by["network", "out"]
    assert out.unit == "GiB" and out.quantity == pytest.approx(1.0)
    assert out.amount == pytest.approx(0.01)  # the default price per GiB sent
    assert by["network", "in"].amount == 0.0

    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    boss = {"Authorization": f"Bearer {data['access_key_id']}:{data['secret_access_key']}"}
    transport = httpx.ASGITransport(app=create_app(ApiContext(ctrl.settings, ctrl)))
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as c:
        r = await c.get(
            "/v1/usage", params={"start": start.isoformat(), "end": end.isoformat()}, headers=boss
        )
        assert r.status_code == 200, r.text
        rows = {(x["kind"], x["state"]): x["quantity"] for x in r.json()["lines"]}
        assert rows["cpu", "used"] == 3700.0 and rows["network", "out"] == float(1 << 30)


def _s(cpu: float, surplus: float | None, started: float = T0, node: str = "n1") -> Counters:
    return Counters(node, started, cpu, 0, 0, surplus)


def test_an_unlimited_instances_surplus_is_counted_once_and_never_above_its_cpu() -> None:
    steps = [
        # (reading, read at, surplus expected)
        (_s(10.0, 4.0), T0 + 100, 4.0),  # first: all of it
        (_s(20.0, 9.0), T0 + 160, 5.0),  # growth
        (_s(20.0, 9.0), T0 + 220, 0.0),  # an agent restart reads the same surplus again
        (_s(22.0, None), T0 + 280, 0.0),  # unreadable (or no longer burstable): nothing
        (_s(30.0, 12.0), T0 + 340, 3.0),  # caught up
        # a QEMU restart on the same node: the surplus is the node's and goes on
        (_s(3.0, 14.0, started=T0 + 400), T0 + 410, 2.0),
        # back on a node holding an old surplus of 500 from an earlier stay: never more than
        # the CPU counted at the same reading
        (_s(1.5, 500.0, started=T0 + 700, node="n2"), T0 + 705, 1.5),
        (_s(4.5, 502.0, started=T0 + 700, node="n2"), T0 + 765, 2.0),
    ]
    last = None
    for reading, at, expected in steps:
        last, used = advance(last, reading, at)
        assert used.cpu_surplus_seconds == pytest.approx(expected), (reading, used)


async def test_the_surplus_is_metered_and_billed_at_its_own_price(ctrl: Controller) -> None:
    me = admin(ctrl)
    inst, node_id = await _running(ctrl, "cb1.nano", "burst")

    def stats(cpu: float, surplus: float) -> NodeStats:
        x = InstanceStats(id=inst.id, cpu_seconds=cpu, started_at=T0, cpu_surplus_seconds=surplus)
        return NodeStats(
            time=T0 + 9000,
            cpus=2,
            cpu_seconds=0,
            load1=0,
            memory_total=1,
            memory_available=1,
            instances=[x],
        )

    for cpu, surplus in ((1000.0, 0.0), (4000.0, 1800.0), (4000.0, 1800.0), (8000.0, 3600.0)):
        async with ctrl.store.write() as s:
            await metering.meter(s, node_id, stats(cpu, surplus))
    bill = await ctrl.metering.bill(me, None, f"{dt.datetime.now(dt.UTC):%Y-%m}")
    by = {(x.kind, x.state): x for x in bill.lines}
    assert by["cpu", "used"].quantity == pytest.approx(8000 / 3600)
    surplus_line = by["cpu", "surplus"]
    assert surplus_line.detail == "cb1.nano" and surplus_line.unit == "core-hour"
    assert surplus_line.quantity == pytest.approx(1.0)  # 3600 core-seconds, counted once
    assert surplus_line.amount == pytest.approx(0.05)  # the default price per core-hour
