"""Accounts and access keys: an admin creates accounts; keys are made for one's own account
(an admin may make them for any). The same keys sign EC2 requests and the native API's."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import Forbidden
from corral.store.models import Account

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], responses=RESPONSES)


def _account(row: Account) -> models.Account:
    return models.Account(id=row.id, name=row.name, admin=row.admin, created_at=row.created_at)


async def _key(ctx: ApiContext, acct: Account) -> models.AccessKeyCreated:
    key = await ctx.controller.accounts.create_key(acct.id, "created over the API")
    return models.AccessKeyCreated(
        access_key_id=key.id,
        secret_access_key=key.secret,
        account_id=acct.id,
        account_name=acct.name,
        region=ctx.settings.region,
        endpoint=ctx.settings.api_url,
    )


@router.get("", response_model=list[models.Account])
async def account_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.Account]:
    if not who.admin:
        return [_account(await ctx.controller.accounts.get(who.account_id))]
    return [_account(a) for a in await ctx.controller.accounts.list()]


@router.post("", status_code=201, response_model=models.AccountCreated)
async def account_create(
    req: models.AccountCreate, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.AccountCreated:
    if not who.admin:
        raise Forbidden("only an admin account may create accounts")
    acct = await ctx.controller.accounts.create(req.name)
    return models.AccountCreated(account=_account(acct), key=await _key(ctx, acct))


@router.post("/keys", status_code=201, response_model=models.AccessKeyCreated)
async def account_key_create(
    account: str | None = Query(None, description="account id or name (default: the caller's own)"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.AccessKeyCreated:
    acct = await ctx.controller.accounts.get(account or who.account_id)
    if acct.id != who.account_id and not who.admin:
        raise Forbidden("only an admin may create keys for another account")
    return await _key(ctx, acct)


@router.delete("/keys/{key_id}", status_code=204)
async def account_key_delete(
    key_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Delete an access key of one's own account (an admin: of any account); not the key
    that signs this request."""
    await ctx.controller.accounts.delete_key(who, key_id)
    return Response(status_code=204)
