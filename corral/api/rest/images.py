"""Images: list, show, build from a recipe, remove."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from corral import models
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller

router = APIRouter(prefix="/v1/images", tags=["images"], responses=RESPONSES)


@router.get("", response_model=list[models.Image])
async def image_list(ctx: ApiContext = Depends(get_context),
                     who: Caller = Depends(auth)) -> list[models.Image]:
    return [views.image(r) for r in await ctx.controller.images.list(who)]


@router.post("/build", status_code=202, response_model=models.ImageAccepted)
async def image_build(req: models.ImageBuild, ctx: ApiContext = Depends(get_context),
                      who: Caller = Depends(auth)) -> models.ImageAccepted:
    op = await ctx.controller.images.build(who, req.recipe, req.force)
    return models.ImageAccepted(operation=views.operation(op))


@router.get("/{ref}", response_model=models.Image)
async def image_show(ref: str, ctx: ApiContext = Depends(get_context),
                     who: Caller = Depends(auth)) -> models.Image:
    return views.image(await ctx.controller.images.get(who, ref))


@router.delete("/{ref}", response_model=models.Image)
async def image_remove(ref: str, ctx: ApiContext = Depends(get_context),
                       who: Caller = Depends(auth)) -> models.Image:
    return views.image(await ctx.controller.images.remove(who, ref))
