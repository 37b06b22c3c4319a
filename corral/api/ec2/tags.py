"""Tags: CreateTags, DeleteTags, DescribeTags over every taggable resource."""

from __future__ import annotations

from typing import Any

from corral.api.ec2.common import dry_run_ok
from corral.api.ec2.errors import missing
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES
from corral.api.ec2.registry import Call, action


@action(
    "CreateTags",
    accepts=(
        "ResourceId.N",
        "Tag.N.Key",
        "Tag.N.Value",
        *DRY_RUN,
    ),
)
async def tags_create(call: Call) -> dict[str, Any]:
    rids = call.p.strings("ResourceId")
    if not rids:
        raise missing("ResourceId")
    wanted = call.p.tags("Tag")
    if not wanted:
        raise missing("Tag")
    await call.ctrl.tags.create(call.caller, rids, wanted, call.dry_run)
    return {"return": True}


@action(
    "DeleteTags",
    accepts=(
        "ResourceId.N",
        "Tag.N.Key",
        "Tag.N.Value",
        *DRY_RUN,
    ),
)
async def tags_delete(call: Call) -> dict[str, Any]:
    rids = call.p.strings("ResourceId")
    if not rids:
        raise missing("ResourceId")
    groups = call.p.group("Tag")
    wanted = {g.need("Key"): g.get("Value") for g in groups} if groups else None
    await call.ctrl.tags.delete(call.caller, rids, wanted, call.dry_run)
    return {"return": True}


@action(
    "DescribeTags",
    accepts=(
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def tags_describe(call: Call) -> dict[str, Any]:
    rows = await call.ctrl.tags.list(call.caller)
    by_resource: dict[str, dict[str, str]] = {}
    for t in rows:
        by_resource.setdefault(t.resource_id, {})[t.key] = t.value
    match = Filters(
        call.p.filters(),
        {
            "key": lambda t: t.key,
            "value": lambda t: t.value,
            "resource-id": lambda t: t.resource_id,
            "resource-type": lambda t: t.resource_type,
        },
        # tag:<key> (and tag-key, tag-value): the tags of resources that carry such a tag
        lambda t: by_resource.get(t.resource_id, {}),
    )
    rows = [t for t in rows if match(t)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(rows, call.p, call.action, call.caller.account_id, 5, 1000)
    return {
        "tagSet": [
            {
                "resourceId": t.resource_id,
                "resourceType": t.resource_type,
                "key": t.key,
                "value": t.value,
            }
            for t in page
        ],
        "nextToken": token,
    }
