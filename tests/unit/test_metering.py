"""Metering and bills: a scripted month of run/stop/resize/start/terminate, a volume and an
elastic IP, with a controlled clock, gives the expected usage and bill to the second; records
are written with the change (a crash loses nothing) and a restart neither loses nor doubles
anything; prices come from the table and its file."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import config
from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller import metering
from corral.controller.service import Controller
from corral.errors import Invalid
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.store import Store
from corral.store.models import Operation
from tests.unit.helpers import admin, finish, req

pytestmark = pytest.mark.postgres


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.t = start

    def __call__(self) -> dt.datetime:
        return self.t

    def at(self, day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 12):
        self.t = dt.datetime(2026, month, day, hour, minute, second, tzinfo=dt.UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock(dt.datetime(2026, 11, 30, tzinfo=dt.UTC))
    monkeypatch.setattr(metering, "now", c)
    yield c


def _lines(lines: list[metering.UsageLine]) -> dict[tuple[str, str, str], float]:
    return {(u.kind, u.detail, u.state): u.seconds for u in lines if u.kind != "image"}


async def _month(ctrl: Controller, clock: Clock) -> None:
    """The script: instance A runs from before the month, stops, is resized, starts and is
    terminated; B runs from the 5th to the end; a 10 GiB volume lives ten days; an elastic IP
    is idle, associated with B for a day, idle again, released."""
    me = admin(ctrl)
    op: Operation | None
    clock.at(30, 22, month=11)
    a, op = await ctrl.instances.run(me, req(instance_type="cr1.micro", name="a"))
    await finish(ctrl, op)
    clock.at(1)
    eip = await ctrl.elastic_ips.allocate(me)
    clock.at(1, 10)
    _, op = await ctrl.instances.stop(me, a.id)
    await finish(ctrl, op)
    clock.at(2, 10)
    await ctrl.instances.modify(me, a.id, instance_type="cr1.small")
    clock.at(2, 12)
    _, op = await ctrl.instances.start(me, a.id)
    await finish(ctrl, op)
    clock.at(3, 12, 0, 30)
    _, op = await ctrl.instances.terminate(me, a.id)
    await finish(ctrl, op)
    clock.at(5)
    b, op = await ctrl.instances.run(me, req(instance_type="cr1.nano", name="b"))
    await finish(ctrl, op)
    clock.at(5, 1)
    await ctrl.elastic_ips.associate(me, b.id, allocation_id=eip.id)
    clock.at(6, 1)
    await ctrl.elastic_ips.disassociate(me, public_ip=eip.public_ip)
    clock.at(7, 1)
    await ctrl.elastic_ips.release(me, allocation_id=eip.id)
    clock.at(10)
    vol, op = await ctrl.volumes.create(me, 10, None)
    await finish(ctrl, op)
    clock.at(20)
    op = await ctrl.volumes.delete(me, vol.id)
    await finish(ctrl, op)


H = 3600.0
TRANSIENT = ("pending", "stopping", "shutting-down")
EXPECTED = {
    ("instance", "cr1.micro", "running"): 10 * H,  # Dec 1 00:00 (the month) - 10:00
    ("instance", "cr1.micro", "stopped"): 24 * H,  # until the resize
    ("instance", "cr1.small", "stopped"): 2 * H,
    ("instance", "cr1.small", "running"): 24 * H + 30,
    ("instance", "cr1.nano", "running"): 27 * 24 * H,  # Dec 5 - Jan 1
    ("volume", "standard", "exists"): 10 * 24 * H,
    ("address", "", "idle"): (4 * 24 + 1) * H + 24 * H,
    ("address", "", "associated"): 24 * H,
}


async def test_a_scripted_month_gives_the_expected_usage_and_bill_to_the_second(
    ctrl: Controller, clock: Clock
) -> None:
    await _month(ctrl, clock)
    clock.at(2, month=12)
    clock.t = dt.datetime(2027, 1, 2, tzinfo=dt.UTC)
    acct, _s, _e, lines = await ctrl.metering.usage(
        admin(ctrl),
        None,
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )
    got = {k: v for k, v in _lines(lines).items() if k[2] not in TRANSIENT}
    assert got == EXPECTED
    # every transition is at a scripted second: the in-between states last 0 s
    assert all(v == 0 for k, v in _lines(lines).items() if k[2] in TRANSIENT)

    bill = await ctrl.metering.bill(admin(ctrl), None, "2026-12")
    by = {(x.kind, x.detail, x.state): x for x in bill.lines if x.kind != "image"}
    assert set(by) == {
        ("instance", "cr1.micro", "running"),
        ("instance", "cr1.small", "running"),
        ("instance", "cr1.nano", "running"),
        ("volume", "standard", "exists"),
        ("address", "", "idle"),
        ("address", "", "associated"),
    }  # stopped instances cost nothing
    assert by["instance", "cr1.small", "running"].quantity == pytest.approx(24 + 30 / 3600)
    assert by["instance", "cr1.micro", "running"].amount == pytest.approx(10 * 0.0116)
    assert by["instance", "cr1.nano", "running"].amount == pytest.approx(648 * 0.0058)
    assert by["volume", "standard", "exists"].quantity == pytest.approx(10 * 240 / 730)
    assert by["volume", "standard", "exists"].amount == pytest.approx(10 * 240 / 730 * 0.10)
    assert by["address", "", "idle"].amount == pytest.approx(121 * 0.005)
    assert by["address", "", "associated"].amount == 0
    expected_total = (
        10 * 0.0116
        + (24 + 30 / 3600) * 0.023
        + 648 * 0.0058
        + 10 * 240 / 730 * 0.10
        + 121 * 0.005
        + sum(x.amount for x in bill.lines if x.kind == "image")
    )
    assert bill.total == pytest.approx(expected_total, abs=1e-5)
    # November holds A's first two hours only
    nov = await ctrl.metering.bill(admin(ctrl), acct.id, "2026-11")
    nov_by = {(x.kind, x.detail): x.quantity for x in nov.lines if x.kind == "instance"}
    assert nov_by == {("instance", "cr1.micro"): pytest.approx(2.0)}


async def test_usage_survives_a_restart_without_loss_or_double_counting(
    tmp_path: Path, store: Store, image_store: ImageStore, clock: Clock
) -> None:
    """A controller is dropped without closing (as a kill -9 would leave it) after the month's
    changes; a new one over the same store (its start backfills and reconciles) reports the
    same usage."""
    state = tmp_path / "state"
    state.mkdir()
    settings = config.load(state, reconcile_interval=3600)
    node = FakeNode()
    first = Controller(settings, store, image_store)
    await first.add_node(node, "n1")
    await first.start()
    await _month(first, clock)
    for t in first._tasks:  # no orderly shutdown: the tasks just stop
        t.cancel()
    clock.t = dt.datetime(2027, 1, 2, tzinfo=dt.UTC)
    second = Controller(settings, store, image_store)
    await second.add_node(node, "n1")
    await second.start()
    try:
        _a, _s, _e, lines = await second.metering.usage(
            admin(second),
            None,
            dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
        )
        got = {k: v for k, v in _lines(lines).items() if k[2] not in TRANSIENT}
        assert got == EXPECTED
    finally:
        await second.close()


async def test_prices_file_overrides_defaults_and_bad_prices_are_named(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    (state / "prices.toml").write_text(
        'currency = "EUR"\n[instance]\n"cr1.nano" = 1.5\n[storage]\n"volume.gp3" = 0.2\n'
    )
    p = metering.load_prices(config.load(state))
    assert p.currency == "EUR"
    assert p.instance_hour("cr1.nano", 2, 2) == 3.0
    assert p.instance_hour("cr1.micro", 1, 1) == 0.0116  # the default stays
    assert p.storage("volume", "gp3") == 0.2 and p.storage("volume", "gp2") == 0.10
    assert p.instance_hour("custom-2cpu-2048mib", 4, 2) == pytest.approx(4 * 0.02 + 2 * 2 * 0.005)
    (state / "prices.toml").write_text('[storage]\nvolume = "cheap"\n')
    with pytest.raises(Invalid, match=r"storage\.volume = 'cheap' must be a price"):
        metering.load_prices(config.load(state))
    with pytest.raises(Invalid, match="YYYY-MM"):
        metering.month_period("December")
    assert metering.month_period("2026-12") == (
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )


async def test_rest_usage_and_bills_own_account_or_admin(ctrl: Controller, clock: Clock) -> None:
    await _month(ctrl, clock)
    clock.t = dt.datetime(2027, 1, 2, tzinfo=dt.UTC)
    user = await ctrl.accounts.create("carol")
    key = await ctrl.accounts.create_key(user.id)
    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    boss = {"Authorization": f"Bearer {data['access_key_id']}:{data['secret_access_key']}"}
    carol = {"Authorization": f"Bearer {key.id}:{key.secret}"}
    transport = httpx.ASGITransport(app=create_app(ApiContext(ctrl.settings, ctrl)))
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as c:
        r = await c.get("/v1/bills", params={"month": "2026-12"}, headers=boss)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["currency"] == "USD" and body["total"] > 4
        kinds = {(x["kind"], x["detail"]) for x in body["lines"]}
        assert ("instance", "cr1.nano") in kinds
        r = await c.get(
            "/v1/usage",
            params={"start": "2026-12-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
            headers=boss,
        )
        assert r.status_code == 200, r.text
        rows = {(x["kind"], x["detail"], x["state"]): x["seconds"] for x in r.json()["lines"]}
        assert rows["instance", "cr1.small", "running"] == 24 * 3600 + 30
        r = await c.get("/v1/bills", params={"month": "2026-12", "account": "admin"}, headers=carol)
        assert r.status_code == 403
        r = await c.get("/v1/bills", params={"month": "2026-12"}, headers=carol)
        assert r.status_code == 200 and r.json()["total"] == 0 and r.json()["lines"] == []
        r = await c.get("/v1/bills", params={"month": "12/2026"}, headers=carol)
        assert r.status_code == 400 and "YYYY-MM" in r.json()["error"]["message"]


def test_a_bill_renders_as_table_csv_and_json() -> None:
    import csv
    import io

    from corral import models
    from corral.cli.billing import render_bill

    line = models.BillLine(
        kind="instance",
        detail="cr1.nano",
        state="running",
        quantity=648.0,
        unit="hour",
        unit_price=0.0058,
        amount=3.7584,
        resources=1,
    )
    b = models.Bill(
        account_id="123456789012",
        account_name="admin",
        month="2026-12",
        start=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        end=dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
        currency="USD",
        lines=[line],
        total=3.7584,
    )
    rows = list(csv.reader(io.StringIO(render_bill(b, "csv"))))
    assert rows[0][:3] == ["kind", "detail", "state"]
    assert rows[1] == [
        "instance",
        "cr1.nano",
        "running",
        "648.0",
        "hour",
        "0.0058",
        "3.7584",
        "1",
        "USD",
    ]
    assert rows[-1][0] == "total" and rows[-1][6] == "3.7584"
    assert models.Bill.model_validate_json(render_bill(b, "json")) == b
    table = render_bill(b, "table")
    assert "instance cr1.nano running" in table and table.splitlines()[-1].endswith("3.758400")


async def test_a_row_made_without_its_defaulted_columns_is_recorded_with_the_defaults(
    store: Store,
) -> None:
    """Column defaults are applied at the INSERT, after the hook: a new instance that leaves
    state, cpus and type to them is recorded as pending, 1 vCPU, a custom size (it failed the
    INSERT of its record with a NULL state)."""
    from sqlalchemy import select

    from corral.store.models import Account, Image, Instance, Node, UsageRecord

    metering.install()
    async with store.write() as s:
        s.add(Account(id="000000000001", name="admin", admin=True))
        s.add(Image(id="ami-00000000000000001", name="tiny", digest="0" * 64))
        s.add(Node(id="node-n1", name="n1"))
    async with store.write() as s:
        s.add(
            Instance(
                id="i-00000000000000001",
                account_id="000000000001",
                name="vm",
                image_id="ami-00000000000000001",
                node_id="node-n1",
                memory=64 << 20,
                disk_size=64 << 20,
                mac="52:54:00:00:00:01",
            )
        )
    async with store.read() as s:
        rec = (await s.scalars(select(UsageRecord))).one()
    assert (rec.kind, rec.state, rec.detail, rec.amount) == (
        "instance",
        "pending",
        "custom-1cpu-64mib",
        1.0,
    )
