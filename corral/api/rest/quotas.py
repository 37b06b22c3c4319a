"""Quotas per account: anyone sees their own account's limits and usage; an admin sees any
account's and sets an account's own limits (controller/quotas.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import Forbidden

router = APIRouter(prefix="/v1/quotas", tags=["quotas"], responses=RESPONSES)


async def _show(ctx: ApiContext, account: str) -> models.Quotas:
    acct, views = await ctx.controller.quotas.show(account)
    return models.Quotas(
        account_id=acct.id,
        account_name=acct.name,
        quotas=[
            models.QuotaLimit(
                name=v.name,
                limit=v.limit,
                used=v.used,
                default=v.default,
                overridden=v.overridden,
                ec2_code=v.ec2_code,
            )
            for v in views
        ],
    )


@router.get("", response_model=models.Quotas)
async def quota_show(
    account: str | None = Query(None, description="account id or name (default: the caller's)"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Quotas:
    """An account's limits, what it uses of them, and which are its own."""
    if account is not None and not who.admin:
        acct = await ctx.controller.accounts.get(account)
        if acct.id != who.account_id:
            raise Forbidden("only an admin may see another account's quotas")
    return await _show(ctx, account or who.account_id)


@router.put("/{account}/{name}", response_model=models.Quotas)
async def quota_set(
    account: str,
    name: str,
    req: models.QuotaSet,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Quotas:
    """Set an account's own limit (admin); ``value`` null puts the default back."""
    await ctx.controller.quotas.set(who, account, name, req.value)
    return await _show(ctx, account)
