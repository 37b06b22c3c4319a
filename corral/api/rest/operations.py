"""Operations: list, show, wait (long poll), events, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import or_, select

from corral import models
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.store.models import Operation

router = APIRouter(prefix="/v1/operations", tags=["operations"], responses=RESPONSES)
MAX_SEQ = 2**63 - 1  # the store's integers are 64-bit: a larger `since` overflowed into a 500


@router.get("", response_model=list[models.Operation])
async def operation_list(
    limit: int = Query(50, ge=1, le=1000),
    target: str | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> list[models.Operation]:
    async with ctx.controller.store.read() as s:
        mine = Operation.account_id == who.account_id
        # the admin also sees the operations of no account (network pushes, a node's work)
        q = select(Operation).where(
            or_(mine, Operation.account_id.is_(None)) if who.admin else mine
        )
        if target:
            q = q.where(Operation.target_id == target)
        rows = await s.scalars(q.order_by(Operation.created_at.desc()).limit(limit))
        return [views.operation(r) for r in rows]


@router.get("/{op_id}", response_model=models.Operation)
async def operation_show(
    op_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Operation:
    return views.operation(await ctx.controller.ops.get(op_id, who.account_id))


@router.get("/{op_id}/wait", response_model=models.Operation)
async def operation_wait(
    op_id: str,
    timeout: float = Query(30, ge=0, le=600),
    since: int = Query(
        -1,
        ge=-1,
        le=MAX_SEQ,
        description="return at the first event after this sequence number; -1 waits for the end",
    ),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Operation:
    op = await ctx.controller.ops.wait(
        op_id, timeout=timeout, since=since, account_id=who.account_id
    )
    return views.operation(op)


@router.get("/{op_id}/events", response_model=list[models.OperationEvent])
async def operation_events(
    op_id: str,
    since: int = Query(0, ge=0, le=MAX_SEQ, description="events after this sequence number"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> list[models.OperationEvent]:
    await ctx.controller.ops.get(op_id, who.account_id)
    return [
        models.OperationEvent(
            seq=e.seq, time=e.time, kind=e.kind, message=e.message, progress=e.progress
        )
        for e in await ctx.controller.ops.events(op_id, since)
    ]


@router.delete("/{op_id}", response_model=models.Operation)
async def operation_cancel(
    op_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Operation:
    return views.operation(await ctx.controller.ops.cancel(op_id, who.account_id))
