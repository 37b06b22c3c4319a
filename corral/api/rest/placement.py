"""Placement: placement groups (create, list, show, remove) and the capacity report
(admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller import capacity as cap
from corral.controller.accounts import Caller
from corral.controller.scheduler import Policy
from corral.errors import Forbidden
from corral.store.models import PlacementGroup

router = APIRouter(prefix="/v1/placement-groups", tags=["placement"], responses=RESPONSES)
capacity_router = APIRouter(prefix="/v1/capacity", tags=["placement"], responses=RESPONSES)


def _view(row: PlacementGroup, members: list[str] | None = None) -> models.PlacementGroup:
    return models.PlacementGroup(
        id=row.id,
        name=row.name,
        strategy=row.strategy,
        state=row.state,
        created_at=row.created_at,
        instances=members or [],
    )


@router.get("", response_model=list[models.PlacementGroup])
async def placement_group_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.PlacementGroup]:
    return [_view(r) for r in await ctx.controller.placement_groups.list(who)]


@router.post("", status_code=201, response_model=models.PlacementGroup)
async def placement_group_create(
    req: models.PlacementGroupCreate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.PlacementGroup:
    return _view(await ctx.controller.placement_groups.create(who, req.name, req.strategy))


@router.get("/{ref}", response_model=models.PlacementGroup)
async def placement_group_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.PlacementGroup:
    mgr = ctx.controller.placement_groups
    row = await mgr.get(who, ref)
    return _view(row, [i.id for i in await mgr.members(who, row.id)])


@router.delete("/{ref}", status_code=204)
async def placement_group_remove(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    await ctx.controller.placement_groups.delete(who, ref)
    return Response(status_code=204)


@capacity_router.get("", response_model=models.Capacity)
async def capacity_show(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Capacity:
    """Per node claimed and free, how many more of each type fit, and the N+1 verdict."""
    if not who.admin:
        raise Forbidden("only an admin account may see the cluster's capacity")
    p = Policy.from_settings(ctx.settings)
    async with ctx.controller.store.read() as s:
        rep = await cap.report(s, p)
    return models.Capacity(
        nodes=[
            models.NodeCapacity(
                id=n.view.id,
                name=n.view.name,
                state=n.view.state,
                cordoned=n.view.cordoned,
                zone=n.view.zone,
                instances=n.instances,
                memory_total=n.view.memory_capacity(p),
                memory_claimed=n.view.claimed_memory,
                memory_free=n.view.free_memory(p),
                cores_total=n.view.cores_capacity(p),
                cores_claimed=round(n.view.claimed_cores, 3),
                cores_free=round(n.view.free_cores(p), 3),
                disk_total=n.view.disk_capacity(p) if n.view.disk else None,
                disk_claimed=n.view.claimed_disk,
                disk_free=n.view.free_disk(p),
                fits=n.fits,
            )
            for n in rep.nodes
        ],
        fits=rep.fits,
        n_plus_one=rep.n_plus_one,
        evacuations=[
            models.Evacuation(node=e.node, instances=e.instances, unplaced=e.unplaced)
            for e in rep.evacuations
        ],
        cpu_allocation_ratio=p.cpu_ratio,
        memory_allocation_ratio=p.memory_ratio,
        disk_allocation_ratio=p.disk_ratio,
    )
