"""Key pairs: import a public key or create a pair, list, show, remove."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from corral import models
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=RESPONSES)


@router.get("", response_model=list[models.KeyPair])
async def key_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.KeyPair]:
    return [views.key_pair(r) for r in await ctx.controller.keypairs.list(who)]


@router.post("", status_code=201, response_model=models.KeyPairCreated)
async def key_add(
    req: models.KeyImport, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.KeyPairCreated:
    row, private = await ctx.controller.keypairs.add(who, req.name, req.public_key, req.key_type)
    return models.KeyPairCreated(**views.key_pair(row).model_dump(), private_key=private)


@router.get("/{name}", response_model=models.KeyPair)
async def key_show(
    name: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.KeyPair:
    return views.key_pair(await ctx.controller.keypairs.get(who, name))


@router.delete("/{name}", status_code=204)
async def key_remove(
    name: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    await ctx.controller.keypairs.remove(who, name)
    return Response(status_code=204)
