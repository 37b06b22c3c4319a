"""Placement groups: CreatePlacementGroup, DescribePlacementGroups, DeletePlacementGroup.
``spread`` (one instance per node; SpreadLevel ``host``) and ``cluster`` (one zone, packed);
``partition`` and rack-level spread are refused: Corral knows nodes, not racks."""

from __future__ import annotations

from typing import Any

from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok, not_found
from corral.api.ec2.errors import Ec2Error, invalid
from corral.api.ec2.listing import Filters
from corral.api.ec2.params import DRY_RUN, FILTERS, TAG_SPECS
from corral.api.ec2.registry import Call, action
from corral.controller import tags
from corral.store.models import PlacementGroup


def _arn(call: Call, row: PlacementGroup) -> str:
    return f"arn:aws:ec2:{call.api.settings.region}:{row.account_id}:placement-group/{row.name}"


def _item(call: Call, row: PlacementGroup, tag_map: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "groupName": row.name,
        "state": row.state,
        "strategy": row.strategy,
        "groupId": row.id,
        "groupArn": _arn(call, row),
        "spreadLevel": "host" if row.strategy == "spread" else None,
        "tagSet": views.tag_set(tag_map.get(row.id)),
    }


@action(
    "CreatePlacementGroup",
    accepts=("GroupName", "Strategy", "SpreadLevel", "PartitionCount", *TAG_SPECS, *DRY_RUN),
    unsupported=("LinkedGroupId", "Operator.*", "ParentGroupId"),
)
async def placement_group_create(call: Call) -> dict[str, Any]:
    p = call.p
    name = p.need("GroupName")
    strategy = p.get("Strategy") or "spread"
    if strategy == "partition" or p.get("PartitionCount") is not None:
        raise Ec2Error(
            "InvalidParameterValue",
            "Corral offers the spread and cluster strategies, not partition",
        )
    if strategy not in ("spread", "cluster"):
        raise invalid("Strategy", strategy, "It must be spread or cluster.")
    level = p.get("SpreadLevel")
    if level is not None and (strategy != "spread" or level != "host"):
        raise Ec2Error(
            "InvalidParameterValue",
            f"SpreadLevel {level!r}: Corral spreads across nodes (host), not racks; "
            "leave SpreadLevel out or give host with Strategy spread",
        )
    wanted = tags.check(p.tag_specs(("placement-group",)).get("placement-group", {}))
    row = await call.ctrl.placement_groups.create(
        call.caller, name, strategy, wanted, dry_run=call.dry_run
    )
    return {"placementGroup": _item(call, row, {row.id: wanted})}


@action("DescribePlacementGroups", accepts=("GroupName.N", "GroupId.N", *FILTERS, *DRY_RUN))
async def placement_group_describe(call: Call) -> dict[str, Any]:
    p = call.p
    rows = await call.ctrl.placement_groups.list(call.caller)
    names, group_ids = p.strings("GroupName"), p.strings("GroupId")
    if names:
        gone = [n for n in names if n not in {r.name for r in rows}]
        if gone:
            raise not_found("InvalidPlacementGroup.Unknown", "placement group", gone)
        rows = [r for r in rows if r.name in names]
    if group_ids:
        gone = [g for g in group_ids if g not in {r.id for r in rows}]
        if gone:
            raise not_found("InvalidPlacementGroup.Unknown", "placement group ID", gone)
        rows = [r for r in rows if r.id in group_ids]
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, call.caller.account_id, [r.id for r in rows])
    match = Filters(
        p.filters(),
        {
            "group-name": lambda r: r.name,
            "group-arn": lambda r: _arn(call, r),
            "state": lambda r: r.state,
            "strategy": lambda r: r.strategy,
            "spread-level": lambda r: "host" if r.strategy == "spread" else None,
        },
        lambda r: tag_map.get(r.id, {}),
    )
    if call.dry_run:
        dry_run_ok()
    return {"placementGroupSet": [_item(call, r, tag_map) for r in rows if match(r)]}


@action("DeletePlacementGroup", accepts=("GroupName", *DRY_RUN))
async def placement_group_delete(call: Call) -> dict[str, Any]:
    name = call.p.need("GroupName")
    await call.ctrl.placement_groups.delete(call.caller, name, dry_run=call.dry_run)
    return {"return": True}
