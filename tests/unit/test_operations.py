"""Operations (jobs): run in the background, recorded with status, events, result or error;
can be waited on, cancelled, and are resumed after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from sqlalchemy import select

from corral.controller import operations
from corral.controller.operations import OpContext, Operations
from corral.errors import Code, CorralError, Invalid, NotFound, WrongState
from corral.store import Store, db
from corral.store.models import Operation

pytestmark = pytest.mark.postgres  # also on PostgreSQL

WAIT = 60.0  # a safety net only (generous: a loaded 2-core machine)


@pytest.fixture
async def ops(store: Store) -> AsyncIterator[Operations]:
    o = Operations(store)
    yield o
    await o.close()


async def _finished(ops: Operations, op_id: str) -> Operation:
    """Poll until the operation ends (``wait`` itself is tested on its own below)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while (op := await ops.get(op_id)).status not in ("succeeded", "failed", "cancelled"):
        assert loop.time() < deadline, f"operation still {op.status}"
        await asyncio.sleep(0.01)
    return op


async def _submit(ops: Operations, op_type: str, **params: Any) -> Operation:
    return await ops.submit(
        op_type,
        account_id=None,
        target_kind="thing",
        target_id="t-1",
        params=params,
        requested_by="tester",
    )


async def test_submitted_operation_succeeds_with_result_and_events(ops: Operations) -> None:
    async def handler(ctx: OpContext) -> dict[str, Any]:
        await ctx.progress(0.5, "half way")
        return {"answer": ctx.params["x"] * 2}

    ops.register("double", handler)
    op = await _submit(ops, "double", x=21)
    assert op.status == "pending"
    done = await ops.wait(op.id, timeout=WAIT)
    assert done.status == "succeeded"
    assert done.result == {"answer": 42}
    assert done.error is None
    assert done.progress == 1.0
    assert done.attempts == 1
    assert done.started_at is not None and done.finished_at is not None
    events = await ops.events(op.id)
    assert [(e.seq, e.kind) for e in events] == [(1, "started"), (2, "progress"), (3, "succeeded")]
    assert events[1].message == "half way" and events[1].progress == 0.5
    assert [e.kind for e in await ops.events(op.id, since=2)] == ["succeeded"]


async def test_handler_returning_nothing_succeeds_with_an_empty_result(ops: Operations) -> None:
    async def handler(ctx: OpContext) -> None:
        return None

    ops.register("nothing", handler)
    done = await _finished(ops, (await _submit(ops, "nothing")).id)
    assert (done.status, done.result) == ("succeeded", {})


async def test_progress_is_clamped_to_zero_and_one(ops: Operations) -> None:
    seen: list[float] = []

    async def handler(ctx: OpContext) -> None:
        for fraction in (-1.0, 7.0):
            await ctx.progress(fraction, "odd")
            seen.append((await ops.get(ctx.id)).progress)

    ops.register("odd", handler)
    await _finished(ops, (await _submit(ops, "odd")).id)
    assert seen == [0.0, 1.0]


async def test_handler_raising_a_corral_error_fails_with_its_error(ops: Operations) -> None:
    async def handler(ctx: OpContext) -> None:
        raise Invalid("size must be positive", field="size", resource="thing")

    ops.register("bad", handler)
    done = await _finished(ops, (await _submit(ops, "bad")).id)
    assert done.status == "failed"
    assert done.error == {
        "code": "invalid",
        "message": "size must be positive",
        "field": "size",
        "resource": "thing",
    }
    assert done.result == {}
    assert (await ops.events(done.id))[-1].kind == "failed"


async def test_handler_crashing_fails_with_code_internal(ops: Operations) -> None:
    async def handler(ctx: OpContext) -> None:
        raise ZeroDivisionError("oops")

    ops.register("crash", handler)
    done = await _finished(ops, (await _submit(ops, "crash")).id)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error["code"] == "internal"
    assert "ZeroDivisionError" in done.error["message"]


async def test_unknown_operation_type_is_refused_before_anything_is_recorded(
    ops: Operations, store: Store
) -> None:
    with pytest.raises(CorralError, match="no handler for operation type nope") as info:
        await _submit(ops, "nope")
    assert info.value.code == Code.INTERNAL
    async with store.read() as s:
        assert list(await s.scalars(select(Operation))) == []


async def test_get_of_an_unknown_operation_is_not_found(ops: Operations) -> None:
    with pytest.raises(NotFound) as info:
        await ops.get("op-00000000000000000")
    assert (info.value.code, info.value.field) == (Code.NOT_FOUND, "operation_id")


async def test_operations_of_another_account_are_not_found(ops: Operations, store: Store) -> None:
    from corral.store.models import Account

    async with store.write() as s:
        s.add(Account(id="111111111111", name="alice"))
    ops.register("noop", lambda ctx: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    op = await ops.submit("noop", account_id="111111111111", target_kind="thing", target_id="t")
    assert (await ops.get(op.id, "111111111111")).id == op.id
    with pytest.raises(NotFound):
        await ops.get(op.id, "222222222222")


async def test_wait_with_since_returns_at_the_next_event(ops: Operations) -> None:
    step = asyncio.Event()

    async def handler(ctx: OpContext) -> None:
        await step.wait()
        await ctx.progress(0.5, "stepped")
        await asyncio.Event().wait()  # until cancelled

    ops.register("slow", handler)
    op = await _submit(ops, "slow")
    started = await ops.wait(op.id, timeout=WAIT, since=0)
    assert (started.status, started.seq) == ("running", 1)
    step.set()
    stepped = await ops.wait(op.id, timeout=WAIT, since=started.seq)
    assert (stepped.status, stepped.seq, stepped.message) == ("running", 2, "stepped")


async def test_wait_returns_the_current_state_after_the_timeout(ops: Operations) -> None:
    async def handler(ctx: OpContext) -> None:
        await asyncio.Event().wait()

    ops.register("forever", handler)
    op = await _submit(ops, "forever")
    # the operation never ends: only the timeout can end this wait (the outer bound catches a
    # wait that ignores it, without timing it)
    got = await asyncio.wait_for(ops.wait(op.id, timeout=0.2), 60)
    assert got.status in ("pending", "running")


async def test_cancel_stops_a_running_operation(ops: Operations) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(ctx: OpContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    ops.register("forever", handler)
    op = await _submit(ops, "forever")
    await asyncio.wait_for(started.wait(), WAIT)
    answer = await ops.cancel(op.id)
    assert answer.status in ("cancelling", "cancelled")
    done = await _finished(ops, op.id)
    assert done.status == "cancelled"
    assert done.error == {"code": "cancelled", "message": "cancelled on request"}
    assert cancelled.is_set()
    assert not await ops.active_for("t-1")


async def test_cancel_of_an_operation_with_no_task_here_finishes_it(store: Store) -> None:
    async with store.write() as s:
        s.add(
            Operation(
                id="op-00000000000000001",
                type="x",
                status="pending",
                target_kind="thing",
                target_id="t-1",
            )
        )
    ops = Operations(store)
    done = await ops.cancel("op-00000000000000001")
    assert done.status == "cancelled"
    assert done.error is not None and done.error["code"] == "cancelled"


async def test_cancel_of_a_finished_operation_is_wrong_state(ops: Operations) -> None:
    ops.register("quick", lambda ctx: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    done = await _finished(ops, (await _submit(ops, "quick")).id)
    assert done.status == "succeeded"
    with pytest.raises(WrongState) as info:
        await ops.cancel(done.id)
    assert info.value.code == Code.WRONG_STATE
    assert "already succeeded" in info.value.message


async def test_active_for_tracks_the_target_while_the_operation_runs(ops: Operations) -> None:
    release = asyncio.Event()

    async def handler(ctx: OpContext) -> None:
        await release.wait()

    ops.register("hold", handler)
    op = await _submit(ops, "hold")
    assert await ops.active_for("t-1")
    release.set()
    await _finished(ops, op.id)
    await asyncio.sleep(0)  # let the done-callback run
    assert not await ops.active_for("t-1")


async def test_shutdown_leaves_running_operations_to_resume_after_a_restart(store: Store) -> None:
    first = Operations(store)
    calls: list[str] = []
    started = asyncio.Event()

    async def stuck(ctx: OpContext) -> None:
        calls.append("first")
        started.set()
        await asyncio.Event().wait()

    first.register("job", stuck)
    op = await first.submit("job", account_id=None, target_kind="thing", target_id="t-1")
    await asyncio.wait_for(started.wait(), WAIT)
    await first.close()
    assert (await first.get(op.id)).status == "running"

    # a new process on the same store picks it up again
    second = Operations(store)

    async def works(ctx: OpContext) -> dict[str, Any]:
        calls.append("second")
        return {"ok": True}

    second.register("job", works)
    assert await second.resume() == [op.id]
    done = await _finished(second, op.id)
    await second.close()
    assert (done.status, done.result, done.attempts) == ("succeeded", {"ok": True}, 2)
    assert calls == ["first", "second"]


async def test_resume_runs_pending_operations_in_creation_order(store: Store) -> None:
    import datetime as dt

    from corral.store.models import utcnow

    base = utcnow()
    async with store.write() as s:
        for i, status in enumerate(["pending", "running", "succeeded", "failed", "pending"]):
            s.add(
                Operation(
                    id=f"op-0000000000000000{i}",
                    type="job",
                    status=status,
                    target_kind="thing",
                    target_id=f"t-{i}",
                    created_at=base + dt.timedelta(seconds=i),
                )
            )
    order: list[str] = []

    async def handler(ctx: OpContext) -> None:
        order.append(ctx.target_id)

    ops = Operations(store)
    ops.register("job", handler)
    resumed = await ops.resume()
    assert resumed == ["op-00000000000000000", "op-00000000000000001", "op-00000000000000004"]
    for oid in resumed:
        assert (await _finished(ops, oid)).status == "succeeded"
    await ops.close()
    assert sorted(order) == ["t-0", "t-1", "t-4"]
    assert (await ops.get("op-00000000000000002")).status == "succeeded"
    assert (await ops.get("op-00000000000000003")).status == "failed"


async def test_start_after_close_leaves_the_operation_pending(store: Store) -> None:
    ops = Operations(store)
    ops.register("job", lambda ctx: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    await ops.close()
    op = await ops.submit("job", account_id=None, target_kind="thing", target_id="t-1")
    await asyncio.sleep(0.05)
    assert (await ops.get(op.id)).status == "pending"


async def test_resume_finishes_an_operation_left_cancelling_as_cancelled(store: Store) -> None:
    async with store.write() as s:
        s.add(
            Operation(
                id="op-00000000000000001",
                type="job",
                status="cancelling",
                target_kind="thing",
                target_id="t-1",
            )
        )
    ran: list[str] = []

    async def handler(ctx: OpContext) -> None:
        ran.append(ctx.id)

    ops = Operations(store)
    ops.register("job", handler)
    await ops.resume()
    done = await _finished(ops, "op-00000000000000001")
    await ops.close()
    assert done.status == "cancelled"
    assert ran == []


async def test_wait_returns_promptly_when_the_operation_finishes_during_its_first_read(
    ops: Operations, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()

    async def handler(ctx: OpContext) -> None:
        await release.wait()

    ops.register("job", handler)
    op = await _submit(ops, "job")
    task = ops.tasks[op.id]
    real_get = ops.get

    async def get_then_finish(op_id: str, account_id: str | None = None) -> Operation:
        stale = await real_get(op_id, account_id)
        if not release.is_set():  # the operation ends while wait() holds the stale answer
            release.set()
            await task
        return stale

    monkeypatch.setattr(ops, "get", get_then_finish)
    slept: list[bool] = []

    class Watched(asyncio.Condition):
        async def wait(self) -> Literal[True]:
            slept.append(True)
            return await super().wait()

    monkeypatch.setitem(ops._changed, op.id, Watched())
    # "promptly" without a clock: a wait that missed the finish would sleep on the condition
    # (until its next re-read); the outer bound only catches a hang
    done = await asyncio.wait_for(ops.wait(op.id, timeout=3600), 120)
    assert done.status == "succeeded"
    assert slept == []


async def test_cancel_right_after_submit_finishes_the_operation_as_cancelled(
    ops: Operations, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    async def handler(ctx: OpContext) -> None:
        ran.append(ctx.id)

    ops.register("job", handler)
    in_started, gate = asyncio.Event(), asyncio.Event()
    real_event = ops._event

    async def slow_started(op_id: str, kind: str, message: str, progress: float | None) -> None:
        await real_event(op_id, kind, message, progress)
        if kind == "started":  # hold the task here, as a busy store would
            in_started.set()
            await gate.wait()

    monkeypatch.setattr(ops, "_event", slow_started)
    op = await _submit(ops, "job")
    await asyncio.wait_for(in_started.wait(), WAIT)
    await ops.cancel(op.id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.5
    while (got := await ops.get(op.id)).status not in ("succeeded", "failed", "cancelled"):
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert got.status == "cancelled"
    assert ran == []


async def test_a_store_too_busy_for_a_write_runs_the_operation_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of writes queued longer than the pool's wait used to fail the operation (and a
    launch with it); now it runs again from its checkpoint, as after a restart."""
    monkeypatch.setattr(db, "POOL_WAIT", 0.2)
    monkeypatch.setattr(operations, "BUSY_BACKOFF", 0.01)
    store = Store(db_url)
    ops = Operations(store)
    release = asyncio.Event()
    holder: list[asyncio.Task[None]] = []
    runs = 0

    async def hold(held: asyncio.Event) -> None:
        async with store.write() as s:
            await s.execute(select(Operation.id).limit(1))  # the connection taken
            held.set()
            await release.wait()

    async def handler(ctx: OpContext) -> dict[str, int]:
        nonlocal runs
        runs += 1
        if runs == 1:  # another writer holds the store longer than a write waits
            held = asyncio.Event()
            holder.append(asyncio.create_task(hold(held)))
            await held.wait()
        try:
            async with store.write() as s:
                await s.execute(select(Operation.id).limit(1))
        finally:
            release.set()  # the other writer is done once this one gave up
        await ctx.checkpoint(wrote=True)
        return {"runs": runs}

    try:
        ops.register("busy", handler)
        done = await _finished(ops, (await _submit(ops, "busy")).id)
        assert done.status == "succeeded", done.error
        assert done.result == {"runs": 2} and done.attempts == 2
    finally:
        release.set()
        await asyncio.gather(*holder)
        await ops.close()
        await store.close()
