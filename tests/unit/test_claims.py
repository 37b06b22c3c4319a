"""Claims and operation leases in the database: two controllers sharing one database (here two
``Claims``/``Operations`` with their own engines) never both hold one target, and what a
controller stops renewing is taken over. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, update

from corral.controller.claims import Claims
from corral.controller.operations import OpContext, Operations
from corral.controller.service import Controller
from corral.store import Store
from corral.store.models import Claim, Operation, utcnow

pytestmark = pytest.mark.postgres
WAIT = 10.0


@pytest.fixture
async def other(db_url: str) -> AsyncIterator[Store]:
    """A second connection pool on the same database, as a second controller would have."""
    db = Store(db_url)
    yield db
    await db.close()


async def _until(check: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_two_controllers_never_both_claim_one_target(store: Store, other: Store) -> None:
    a, b = Claims(store, "ctl-a"), Claims(other, "ctl-b")
    keys = [f"i-{n:04d}" for n in range(20)]
    results = await asyncio.gather(*(c.try_claim(k, holder=c.owner) for k in keys for c in (a, b)))
    for n, key in enumerate(keys):
        won_a, won_b = results[2 * n], results[2 * n + 1]
        assert won_a != won_b, f"{key}: a={won_a} b={won_b}"
    async with store.read() as s:
        rows = {c.key: c.owner for c in await s.scalars(select(Claim))}
    assert rows == {k: "ctl-a" if k in a.held else "ctl-b" for k in keys}
    assert set(a.held) | set(b.held) == set(keys) and not set(a.held) & set(b.held)


async def test_a_lock_held_by_one_controller_holds_off_the_other(
    store: Store, other: Store
) -> None:
    a, b = Claims(store, "ctl-a"), Claims(other, "ctl-b")
    order: list[str] = []
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def first() -> None:
        async with a.lock("i-1", holder="op-a"):
            order.append("a in")
            inside.set()
            await leave.wait()
            order.append("a out")

    async def second() -> None:
        await inside.wait()
        async with b.lock("i-1", holder="op-b"):
            order.append("b in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await inside.wait()
    await asyncio.sleep(0.3)  # b polls meanwhile and must not get in
    assert order == ["a in"]
    claim = await b.holder("i-1")
    assert claim is not None and (claim.owner, claim.holder) == ("ctl-a", "op-a")
    leave.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert order == ["a in", "a out", "b in"]
    assert await a.holder("i-1") is None  # b released it too


async def test_an_expired_claim_is_taken_over_and_its_old_owner_learns_it(
    store: Store, other: Store
) -> None:
    a = Claims(store, "ctl-a", lease=0.5)
    b = Claims(other, "ctl-b")
    assert await a.try_claim("i-1", holder="op-a")
    assert not await b.try_claim("i-1")
    await _until(lambda: b.try_claim("i-1", holder="op-b"), "the lease to end")
    claim = await b.holder("i-1")
    assert claim is not None and claim.owner == "ctl-b"
    assert await a.renew() == {"i-1"}  # a finds it lost, and forgets it
    assert "i-1" not in a.held
    await a.release("i-1")  # a late release of a's old claim leaves b's alone
    claim = await b.holder("i-1")
    assert claim is not None and claim.owner == "ctl-b"


async def test_a_renewed_claim_is_not_taken_over(store: Store, other: Store) -> None:
    a = Claims(store, "ctl-a", lease=0.5)
    b = Claims(other, "ctl-b")
    assert await a.try_claim("i-1")
    for _ in range(4):  # 1.2 s: well past one lease, renewed every 0.3 s
        await asyncio.sleep(0.3)
        assert await a.renew() == set()
        assert not await b.try_claim("i-1")


async def test_a_restarted_controller_takes_its_own_claims_back_at_once(
    store: Store, other: Store
) -> None:
    before = Claims(store, "ctl-a")
    assert await before.try_claim("i-1")
    after = Claims(other, "ctl-a")  # same owner name: the same controller after a crash
    assert await after.try_claim("i-1")


# -- the operation queue ------------------------------------------------------------------------


def _orphan(n: int, owner: str | None = None, lease_left: float = -60.0) -> Operation:
    return Operation(
        id=f"op-{n:017d}",
        type="count",
        status="running" if owner else "pending",
        target_kind="thing",
        target_id=f"t-{n}",
        owner=owner,
        lease_expires_at=utcnow() + dt.timedelta(seconds=lease_left) if owner else None,
        created_at=utcnow(),
    )


def _counting(ops: Operations, runs: list[tuple[str, str]]) -> None:
    async def handler(ctx: OpContext) -> dict[str, Any]:
        runs.append((ctx.id, ctx.ops.owner))
        await asyncio.sleep(0.01)
        return {}

    ops.register("count", handler)


async def _all_done(store: Store, ids: list[str]) -> bool:
    async with store.read() as s:
        rows = await s.scalars(select(Operation.status).where(Operation.id.in_(ids)))
        return all(st == "succeeded" for st in rows)


async def test_two_controllers_take_over_each_orphaned_operation_once(
    store: Store, other: Store
) -> None:
    orphans = [_orphan(n) for n in range(12)] + [_orphan(n, "dead") for n in range(12, 20)]
    async with store.write() as s:
        s.add_all(orphans)
    ids = [o.id for o in orphans]
    runs: list[tuple[str, str]] = []
    a, b = Operations(store, "ctl-a"), Operations(other, "ctl-b")
    _counting(a, runs)
    _counting(b, runs)
    try:
        taken = await asyncio.gather(a.take_over(), b.take_over(), a.take_over(), b.take_over())
        await _until(lambda: _all_done(store, ids), "every operation to finish")
    finally:
        await a.close()
        await b.close()
    assert sorted(i for i, _ in runs) == sorted(ids)  # each ran, and once
    assert sorted(i for got in taken for i in got) == sorted(ids)
    async with store.read() as s:
        owners = {o.id: o.owner for o in await s.scalars(select(Operation))}
    assert owners == dict(runs)


async def test_an_operation_with_a_live_lease_is_left_to_its_owner(
    store: Store, other: Store
) -> None:
    async with store.write() as s:
        s.add(_orphan(1, "ctl-a", lease_left=60))
    b = Operations(other, "ctl-b")
    runs: list[tuple[str, str]] = []
    _counting(b, runs)
    assert await b.take_over() == []
    await asyncio.sleep(0.1)
    assert runs == []
    async with store.write() as s:  # a stops renewing: its lease ends
        await s.execute(
            update(Operation).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert await b.take_over() == [_orphan(1).id]
    await _until(lambda: _all_done(store, [_orphan(1).id]), "the taken-over operation")
    await b.close()
    assert runs == [(_orphan(1).id, "ctl-b")]


async def test_an_operation_taken_over_stops_on_its_old_owner_unfinished(
    store: Store, other: Store
) -> None:
    a = Operations(store, "ctl-a")
    started, stopped = asyncio.Event(), asyncio.Event()

    async def hold(ctx: OpContext) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    a.register("hold", hold)
    op = await a.submit("hold", account_id=None, target_kind="thing", target_id="t-1")
    await asyncio.wait_for(started.wait(), WAIT)
    async with other.write() as s:  # what b's take_over does once a's lease has ended
        await s.execute(update(Operation).values(owner="ctl-b"))
    assert await a.renew() == {op.id}
    await asyncio.wait_for(stopped.wait(), WAIT)
    await asyncio.sleep(0.05)
    assert (await a.get(op.id)).status == "running"  # not finished: b runs it now
    await a.close()


async def test_cancel_through_another_controller_reaches_the_owner(
    store: Store, other: Store
) -> None:
    a, b = Operations(store, "ctl-a"), Operations(other, "ctl-b")
    started = asyncio.Event()

    async def hold(ctx: OpContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    a.register("hold", hold)
    b.register("hold", hold)
    op = await a.submit("hold", account_id=None, target_kind="thing", target_id="t-1")
    await asyncio.wait_for(started.wait(), WAIT)
    assert (await b.cancel(op.id)).status == "cancelling"  # b does not run it: a does
    await a.renew()
    await _until(lambda: _status_is(store, op.id, "cancelled"), "the owner to cancel the operation")
    await a.close()
    await b.close()


async def _status_is(store: Store, op_id: str, status: str) -> bool:
    async with store.read() as s:
        return await s.scalar(select(Operation.status).where(Operation.id == op_id)) == status


async def test_an_instance_lock_is_a_claim_another_controller_sees(
    ctrl: Controller, other: Store
) -> None:
    b = Claims(other, "ctl-b")
    async with ctrl.instances.lock("i-0123456789abcdef0"):
        claim = await b.holder("i-0123456789abcdef0")
        assert claim is not None and claim.owner == ctrl.owner
        assert not await b.try_claim("i-0123456789abcdef0")
    assert await b.holder("i-0123456789abcdef0") is None
    assert await b.try_claim("i-0123456789abcdef0")
