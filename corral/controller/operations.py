"""Operations (jobs): every mutation runs as one, recorded in the store with status, progress,
events and a clear error. Handlers are idempotent, so an operation interrupted by a crash is
simply run again when the controller starts (``resume``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from corral.errors import CorralError, NotFound, WrongState
from corral.ids import new_id
from corral.store import Store
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


@dataclass
class OpContext:
    """What a handler gets: its operation's id and parameters, and a way to report progress."""

    ops: Operations
    id: str
    type: str
    params: dict[str, Any]
    account_id: str | None
    target_id: str

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
    def __init__(self, store: Store) -> None:
        self.store = store
        self.handlers: dict[str, Handler] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.targets: dict[str, str] = {}  # running operation id -> its target's id
        self.holds: dict[str, dict[str, Any]] = {}  # running operation id -> its parameters
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
        )

    def start(self, op: Operation) -> None:
        """Run a committed pending operation in the background."""
        if self._closing:
            return  # it stays pending and resumes at the next start
        task = asyncio.create_task(self._run(op.id), name=f"op-{op.type}-{op.id}")
        self.tasks[op.id] = task
        self.targets[op.id] = op.target_id
        # known from the start (a resumed operation holds its instance before its task runs)
        self.holds[op.id] = dict(op.params or {})
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
                self.targets.pop(oid, None)
                self.holds.pop(oid, None)

    async def _run(self, op_id: str) -> None:
        async with self.store.write() as s:
            op = await s.get(Operation, op_id)
            if op is None or op.status not in ACTIVE:
                return
            cancel_now = op.status == "cancelling"
            if not cancel_now:
                op.status = "running"
                op.started_at = op.started_at or utcnow()
                op.attempts += 1
            ctx = OpContext(self, op.id, op.type, dict(op.params), op.account_id, op.target_id)
            handler = self.handlers[op.type]
        if op_id in self.tasks:
            self.holds[op_id] = ctx.params  # the live parameters: checkpoints add to them
        if cancel_now:  # cancelled while no one ran it (e.g. across a restart)
            await self._finish(op_id, "cancelled", None, CANCELLED)
            return
        try:
            await self._event(op_id, "started", f"{ctx.type} {ctx.target_id}".strip(), None)
            result = await handler(ctx)
        except asyncio.CancelledError:
            if self._closing:
                raise  # controller shutdown: stays running, resumed at the next start
            await asyncio.shield(self._finish(op_id, "cancelled", None, CANCELLED))
            raise
        except CorralError as err:
            log.info("operation %s (%s) failed: %s", op_id, ctx.type, err.message)
            await self._finish(op_id, "failed", None, err.to_dict())
        except Exception as err:
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
            if result is not None:
                op.result = result
                op.progress = 1.0
            op.error = error
            msg = error["message"] if error else "done"
            await self._add_event(s, op, status, msg, op.progress)
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
        else:
            await self._finish(op_id, "cancelled", None, CANCELLED)
        return await self.get(op_id)

    def active_for(self, target_id: str) -> bool:
        """Whether a running operation targets or holds this (instance, volume …)."""
        if target_id in self.targets.values():
            return True
        return any(p.get(k) == target_id for p in self.holds.values() for k in HOLDS)

    # -- life cycle ------------------------------------------------------------------------
    async def resume(self) -> list[str]:
        """Start again every operation a crash or shutdown left unfinished."""
        async with self.store.read() as s:
            rows = list(
                await s.scalars(
                    select(Operation)
                    .where(Operation.status.in_(ACTIVE))
                    .order_by(Operation.created_at)
                )
            )
        for op in rows:
            log.info("resuming operation %s (%s %s)", op.id, op.type, op.target_id)
            self.start(op)
        return [op.id for op in rows]

    async def close(self) -> None:
        self._closing = True
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
