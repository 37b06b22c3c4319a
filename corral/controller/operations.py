"""Operations (jobs): every mutation runs as one, recorded in the store with status, progress,
events and a clear error. Handlers are idempotent, so an operation interrupted by a crash is
simply run again when the controller starts (``resume``).

Each running operation is owned by one controller with a lease in its row, renewed while it
runs. ``take_over`` claims the unfinished operations nobody holds (never started, left by a
crash, or whose owner stopped renewing) with ``SELECT … FOR UPDATE SKIP LOCKED``, so controllers
sharing a PostgreSQL database each take different ones (on SQLite the single writer serialises)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update

from corral.controller import observe
from corral.controller.claims import LEASE, db_now
from corral.errors import CorralError, NotFound, WrongState
from corral.ids import new_id
from corral.store import Store, db
from corral.store.models import Operation, OperationEvent, utcnow

log = logging.getLogger(__name__)

ACTIVE = ("pending", "running", "cancelling")
# parameters naming other things an operation owns while it runs, besides its target: an image
# capture powers its instance off and on, a volume detach may restart its instance, a replace
# drives its new instance. The reconciler leaves them alone (a kill -9 during CreateImage left
# the instance stopped, "powered off by the guest", because nothing said the capture owned it).
HOLDS = ("instance_id", "new_id")
CANCELLED = {"code": "cancelled", "message": "cancelled on request"}
DONE = ("succeeded", "failed", "cancelled")
BUSY_ATTEMPTS = 8  # runs of an operation whose writes found the store busy, before it fails
BUSY_BACKOFF, BUSY_BACKOFF_MAX = 1.0, 30.0  # seconds before the next run, doubling
RETRYING = "retrying: "  # the message prefix of an event saying the operation runs again


@dataclass
class OpContext:
    """What a handler gets: its operation's id and parameters, and a way to report progress."""

    ops: Operations
    id: str
    type: str
    params: dict[str, Any]
    account_id: str | None
    target_id: str
    # a store too busy for a write (``db.busy``) runs the operation again: a handler that
    # undoes its work on an error lets such an error through while this is true
    runs_again_when_busy: bool = False

    def runs_again(self, err: BaseException) -> bool:
        return self.runs_again_when_busy and db.busy(err)

    async def progress(self, fraction: float, message: str) -> None:
        await self.ops._event(self.id, "progress", message, fraction)

    async def checkpoint(self, s: Any = None, **values: Any) -> None:
        """Record how far a multi-step handler got, in its parameters: a resumed handler (after
        a crash) reads them back. Given a session ``s``, in that transaction (so the step and
        its record commit together)."""
        self.params.update(values)
        if s is not None:
            op = await s.get(Operation, self.id)
            if op is not None:
                op.params = {**(op.params or {}), **values}
            return
        async with self.ops.store.write() as s2:
            op = await s2.get(Operation, self.id)
            if op is not None:
                op.params = {**(op.params or {}), **values}


Handler = Callable[[OpContext], Awaitable[dict[str, Any] | None]]


class Operations:
    def __init__(self, store: Store, owner: str = "controller", lease: float = LEASE) -> None:
        self.store = store
        self.owner = owner  # this controller's name in operations' owner column
        self.lease = dt.timedelta(seconds=lease)
        self.handlers: dict[str, Handler] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._lost: set[str] = set()  # operations another controller took over from us
        # one scan at a time in this controller: a claimed row is started before the next scan
        self._taking = asyncio.Lock()
        self._changed: dict[str, asyncio.Condition] = {}
        self._generation: dict[str, int] = {}
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def register(self, op_type: str, handler: Handler) -> None:
        self.handlers[op_type] = handler

    # -- submit and run --------------------------------------------------------------------
    def new(
        self,
        op_type: str,
        *,
        account_id: str | None,
        target_kind: str,
        target_id: str,
        params: dict[str, Any] | None = None,
        requested_by: str = "",
    ) -> Operation:
        """A pending operation row; add it to the caller's transaction, then ``start`` it."""
        if op_type not in self.handlers:
            raise CorralError(f"no handler for operation type {op_type}")
        return Operation(
            id=new_id("operation"),
            account_id=account_id,
            type=op_type,
            status="pending",
            target_kind=target_kind,
            target_id=target_id,
            params=params or {},
            requested_by=requested_by,
            created_at=utcnow(),
            owner=self.owner,
            lease_expires_at=utcnow() + self.lease,
        )

    def start(self, op: Operation) -> None:
        """Run a committed pending operation in the background (once, however often called)."""
        if self._closing or op.id in self.tasks:
            return  # closing: it stays pending and resumes at the next start
        task = asyncio.create_task(self._run(op.id), name=f"op-{op.type}-{op.id}")
        self.tasks[op.id] = task
        task.add_done_callback(self._forget)

    async def submit(self, op_type: str, **kw: Any) -> Operation:
        op = self.new(op_type, **kw)
        async with self.store.write() as s:
            s.add(op)
        self.start(op)
        return op

    def _forget(self, task: asyncio.Task[None]) -> None:
        for oid, t in list(self.tasks.items()):
            if t is task:
                self.tasks.pop(oid, None)
                self._lost.discard(oid)

    async def _run(self, op_id: str) -> None:
        """Run the operation; when the store was too busy for one of its writes (a burst of
        writes, a lock wait, a lost connection: ``db.busy``) run it again from its last
        checkpoint after a back-off, as a restart would, rather than fail the work. A handler
        that undoes its work on an error lets such an error through untouched."""
        for attempt in range(1, BUSY_ATTEMPTS + 1):
            try:
                await self._run_once(op_id, again=attempt < BUSY_ATTEMPTS)
                return
            except Exception as err:
                if not db.busy(err) or attempt == BUSY_ATTEMPTS or self._closing:
                    raise
                wait = min(BUSY_BACKOFF * 2 ** (attempt - 1), BUSY_BACKOFF_MAX)
                log.warning(
                    "operation %s: the store was busy (%s); running it again in %.0f s",
                    op_id, type(err).__name__, wait,
                )  # fmt: skip
                with contextlib.suppress(Exception):
                    msg = f"{RETRYING}the store was busy ({type(err).__name__}); again in {wait:.0f} s"
                    await self._event(op_id, "retrying", msg, None)
                await asyncio.sleep(wait)

    async def _run_once(self, op_id: str, again: bool) -> None:
        async with self.store.write() as s:
            op = await s.get(Operation, op_id)
            if op is None or op.status not in ACTIVE:
                return
            now = await db_now(s)
            if (
                op.owner not in (None, self.owner)
                and op.lease_expires_at is not None
                and op.lease_expires_at > now
            ):
                log.info("operation %s is run by %s; leaving it", op_id, op.owner)
                return
            op.owner, op.lease_expires_at = self.owner, now + self.lease
            cancel_now = op.status == "cancelling"
            if not cancel_now:
                op.status = "running"
                op.started_at = op.started_at or utcnow()
                op.attempts += 1
            ctx = OpContext(
                self, op.id, op.type, dict(op.params), op.account_id, op.target_id, again
            )
            handler = self.handlers[op.type]
        if cancel_now:  # cancelled while no one ran it (e.g. across a restart)
            await self._finish(op_id, "cancelled", None, CANCELLED)
            return
        try:
            await self._event(op_id, "started", f"{ctx.type} {ctx.target_id}".strip(), None)
            result = await handler(ctx)
        except asyncio.CancelledError:
            if self._closing or op_id in self._lost:
                raise  # shutdown or taken over: stays running, resumed by whoever owns it
            await asyncio.shield(self._finish(op_id, "cancelled", None, CANCELLED))
            raise
        except CorralError as err:
            log.info("operation %s (%s) failed: %s", op_id, ctx.type, err.message)
            await self._finish(op_id, "failed", None, err.to_dict())
        except Exception as err:
            if ctx.runs_again(err):
                raise  # run again (``_run``)
            log.error("operation %s (%s) crashed:\n%s", op_id, ctx.type, traceback.format_exc())
            await self._finish(
                op_id, "failed", None, {"code": "internal", "message": f"internal error: {err!r}"}
            )
        else:
            await self._finish(op_id, "succeeded", result or {}, None)

    async def _finish(
        self, op_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        async with self.store.write() as s:
            op = await s.get(Operation, op_id)
            if op is None:
                return
            op.status = status
            op.finished_at = utcnow()
            op.lease_expires_at = None
            if result is not None:
                op.result = result
                op.progress = 1.0
            op.error = error
            msg = error["message"] if error else "done"
            await self._add_event(s, op, status, msg, op.progress)
            took = (op.finished_at - op.created_at).total_seconds()
        observe.operation_finished(op.type, status, took)  # /metrics
        await self._notify(op_id)
        asyncio.get_running_loop().call_later(60, self._prune, op_id)

    def _prune(self, op_id: str) -> None:
        cond = self._changed.get(op_id)
        if cond is not None and not cond.locked():
            self._changed.pop(op_id, None)

    async def _event(self, op_id: str, kind: str, message: str, progress: float | None) -> None:
        async with self.store.write() as s:
            op = await s.get(Operation, op_id)
            if op is None:
                return
            if progress is not None:
                op.progress = max(0.0, min(1.0, progress))
            if message:
                op.message = message
            await self._add_event(s, op, kind, message, op.progress)
        await self._notify(op_id)

    @staticmethod
    async def _add_event(s: Any, op: Operation, kind: str, message: str, progress: float) -> None:
        op.seq += 1
        s.add(
            OperationEvent(
                operation_id=op.id,
                seq=op.seq,
                kind=kind,
                message=message,
                progress=progress,
                time=utcnow(),
            )
        )

    def _cond(self, op_id: str) -> asyncio.Condition:
        return self._changed.setdefault(op_id, asyncio.Condition())

    async def _notify(self, op_id: str) -> None:
        cond = self._cond(op_id)
        async with cond:
            self._generation[op_id] = self._generation.get(op_id, 0) + 1
            cond.notify_all()

    # -- observe ---------------------------------------------------------------------------
    async def get(self, op_id: str, account_id: str | None = None) -> Operation:
        async with self.store.read() as s:
            op = await s.get(Operation, op_id)
        if op is None or (account_id is not None and op.account_id not in (account_id, None)):
            raise NotFound(
                f"operation {op_id} does not exist", resource="operation", field="operation_id"
            )
        return op

    async def wait(
        self, op_id: str, *, timeout: float, since: int = -1, account_id: str | None = None
    ) -> Operation:
        """Return once the operation has an event after ``since`` (or has finished), or after
        ``timeout`` with its current state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cond = self._cond(op_id)
        while True:
            # read the generation before the row: a change after this read wakes us below
            generation = self._generation.get(op_id, 0)
            op = await self.get(op_id, account_id)
            if op.status in DONE or (since >= 0 and op.seq > since):
                return op
            remaining = deadline - loop.time()
            if remaining <= 0:
                return op
            async with cond:
                if self._generation.get(op_id, 0) == generation:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cond.wait(), min(remaining, 5.0))

    async def events(self, op_id: str, since: int = 0) -> list[OperationEvent]:
        async with self.store.read() as s:
            rows = await s.scalars(
                select(OperationEvent)
                .where(OperationEvent.operation_id == op_id, OperationEvent.seq > since)
                .order_by(OperationEvent.seq)
            )
            return list(rows)

    async def cancel(self, op_id: str, account_id: str | None = None) -> Operation:
        op = await self.get(op_id, account_id)
        if op.status in DONE:
            raise WrongState(f"operation {op_id} already {op.status}", resource="operation")
        async with self.store.write() as s:
            await s.execute(
                update(Operation).where(Operation.id == op_id).values(status="cancelling")
            )
        task = self.tasks.get(op_id)
        if task is not None:
            task.cancel()
        elif (
            op.owner not in (None, self.owner)
            and op.lease_expires_at is not None
            and op.lease_expires_at > utcnow()
        ):
            pass  # another controller runs it: it sees "cancelling" when it renews its lease
        else:
            await self._finish(op_id, "cancelled", None, CANCELLED)
        return await self.get(op_id)

    async def active_for(self, target_id: str) -> bool:
        """Whether an unfinished operation (of any controller) targets or holds ``target_id``
        (an instance, a volume …)."""
        return target_id in await self.active_targets([target_id])

    async def active_targets(self, target_ids: list[str] | None = None) -> set[str]:
        """The targets (of ``target_ids``, or all) that unfinished operations work on: their
        target, and what they hold by name in their parameters (``HOLDS``: a capture holds its
        instance, a replace its new one), known from the moment the operation is recorded."""
        q = select(Operation.target_id, Operation.params).where(Operation.status.in_(ACTIVE))
        async with self.store.read() as s:
            rows = (await s.execute(q)).all()
        found: set[str] = set()
        for target, params in rows:
            if target:
                found.add(target)
            for k in HOLDS:
                v = (params or {}).get(k)
                if isinstance(v, str):
                    found.add(v)
        return found if target_ids is None else found & set(target_ids)

    # -- life cycle ------------------------------------------------------------------------
    async def resume(self) -> list[str]:
        """Start again every operation a crash or shutdown left unfinished (ours, nobody's, or
        another controller's whose lease has ended)."""
        return await self.take_over()

    async def take_over(self) -> list[str]:
        """Claim and start the unfinished operations free to take: never owned, owned by an
        earlier run of this controller, or whose owner's lease has ended. Rows another
        transaction has locked are skipped, not waited for."""
        async with self._taking:
            return await self._take_over()

    async def _take_over(self) -> list[str]:
        async with self.store.write(exclusive=False) as s:
            now = await db_now(s)
            rows = [
                op
                for op in await s.scalars(
                    select(Operation)
                    .where(
                        Operation.status.in_(ACTIVE),
                        or_(
                            Operation.owner.is_(None),
                            Operation.owner == self.owner,
                            Operation.lease_expires_at.is_(None),
                            Operation.lease_expires_at < now,
                        ),
                    )
                    .order_by(Operation.created_at)
                    .with_for_update(skip_locked=True)
                )
                if op.id not in self.tasks
            ]
            for op in rows:
                if op.owner not in (None, self.owner):
                    log.warning("taking over operation %s from %s", op.id, op.owner)
                op.owner, op.lease_expires_at = self.owner, now + self.lease
        for op in rows:
            log.info("resuming operation %s (%s %s)", op.id, op.type, op.target_id)
            self.start(op)
        return [op.id for op in rows]

    async def renew(self) -> set[str]:
        """Extend the leases of the operations this controller runs. One found taken over
        (our lease ended first) is stopped here without being finished: its new owner runs
        it. Returns those."""
        ids = set(self.tasks)
        if not ids:
            return set()
        async with self.store.write() as s:
            now = await db_now(s)
            result = await s.execute(
                update(Operation)
                .where(Operation.id.in_(ids), Operation.owner == self.owner)
                .values(lease_expires_at=now + self.lease)
                .returning(Operation.id, Operation.status)
            )
            kept: dict[str, str] = {oid: status for oid, status in result.all()}
        for oid, status in kept.items():
            task = self.tasks.get(oid)
            if status == "cancelling" and task is not None:
                task.cancel()  # cancelled through another controller
        lost = {oid for oid in ids - set(kept) if oid in self.tasks}
        for oid in lost:
            log.error("operation %s was taken over by another controller; stopping it here", oid)
            self._lost.add(oid)
            self.tasks[oid].cancel()
        return lost

    async def close(self) -> None:
        self._closing = True
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
