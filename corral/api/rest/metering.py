"""Usage and bills (controller/metering.py): one's own account's; an admin's of any."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Query

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import Invalid

router = APIRouter(tags=["billing"], responses=RESPONSES)


def _aware(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise Invalid(f"{name} {value.isoformat()} needs a time zone (e.g. ...Z)", field=name)
    return value


@router.get("/v1/usage", response_model=models.Usage)
async def usage_show(
    account: str | None = Query(None, description="account id or name (default: the caller's)"),
    start: dt.datetime | None = Query(None, description="default: the start of this month"),
    end: dt.datetime | None = Query(None, description="default: now"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Usage:
    """Resource-seconds per kind, type and state over a period, from recorded transitions."""
    acct, a, b, lines = await ctx.controller.metering.usage(
        who, account, _aware(start, "start"), _aware(end, "end")
    )
    return models.Usage(
        account_id=acct.id,
        account_name=acct.name,
        start=a,
        end=b,
        lines=[
            models.UsageLine(
                kind=u.kind,
                detail=u.detail,
                state=u.state,
                seconds=u.seconds,
                amount_seconds=u.amount_seconds,
                resources=len(u.resources),
                quantity=u.quantity,
            )
            for u in lines
        ],
    )


@router.get("/v1/bills", response_model=models.Bill)
async def bill_show(
    month: str = Query(..., description="YYYY-MM (UTC)"),
    account: str | None = Query(None, description="account id or name (default: the caller's)"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Bill:
    """An account's bill for a month, priced from the price table (docs/billing.md)."""
    bill = await ctx.controller.metering.bill(who, account, month)
    return models.Bill(
        account_id=bill.account_id,
        account_name=bill.account_name,
        month=month,
        start=bill.start,
        end=bill.end,
        currency=bill.currency,
        lines=[
            models.BillLine(
                kind=x.kind,
                detail=x.detail,
                state=x.state,
                quantity=x.quantity,
                unit=x.unit,
                unit_price=x.unit_price,
                amount=x.amount,
                resources=x.resources,
            )
            for x in bill.lines
        ],
        total=bill.total,
    )
