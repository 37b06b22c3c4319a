"""Tags on any taggable resource (instances, images, volumes, snapshots, security groups,
addresses, key pairs, placement groups): list, set, remove. The controller path of EC2's
CreateTags/DeleteTags/DescribeTags."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response

from corral import netmodels as m
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES, rest_fields
from corral.controller.accounts import Caller

router = APIRouter(prefix="/v1/tags", tags=["tags"], responses=RESPONSES)

FIELDS = {"ResourceId": "resources", "Tag.Key": "tags", "Tag.Value": "tags", "Tag": "tags"}


@router.get("", response_model=list[m.Tag])
async def tag_list(
    resource: list[str] = Query([], description="only these resources' tags"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> list[m.Tag]:
    return [
        m.Tag(resource_id=t.resource_id, resource_type=t.resource_type, key=t.key, value=t.value)
        for t in await ctx.controller.tags.list(who)
        if not resource or t.resource_id in resource
    ]


@router.post("", status_code=204)
async def tag_set(
    req: m.TagsSet, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Set (add or overwrite) tags on resources of yours; all or nothing."""
    with rest_fields(FIELDS):
        await ctx.controller.tags.create(who, req.resources, dict(req.tags))
    return Response(status_code=204)


@router.post("/remove", status_code=204)
async def tag_remove(
    req: m.TagsRemove, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Remove the given keys (or every tag) from resources of yours."""
    keys: dict[str, str | None] | None = None if req.keys is None else dict.fromkeys(req.keys)
    with rest_fields(FIELDS):
        await ctx.controller.tags.delete(who, req.resources, keys)
    return Response(status_code=204)
