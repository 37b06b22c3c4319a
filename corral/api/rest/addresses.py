"""Elastic addresses: allocate from the public pool, associate with an instance, disassociate,
release, list, show. The same controller paths as EC2's *Address calls."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from corral import netmodels as m
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES, rest_fields
from corral.controller.accounts import Caller
from corral.errors import NotFound
from corral.store import models as db

router = APIRouter(prefix="/v1/addresses", tags=["addresses"], responses=RESPONSES)

FIELDS = {
    "AllocationId": "address",
    "PublicIp": "address",
    "AssociationId": "address",
    "Tag.Key": "tags",
    "Tag.Value": "tags",
    "Tag": "tags",
}


@router.get("", response_model=list[m.Address])
async def address_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[m.Address]:
    return await _views(ctx, who, await ctx.controller.elastic_ips.list(who))


@router.post("", status_code=201, response_model=m.Address)
async def address_allocate(
    req: m.AddressAllocate | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> m.Address:
    """A free address from the pool (409 when the pool is used up)."""
    req = req or m.AddressAllocate()
    with rest_fields(FIELDS):
        row = await ctx.controller.elastic_ips.allocate(who, tags=req.tags)
    return await _one(ctx, who, row.id)


@router.get("/{ref}", response_model=m.Address)
async def address_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> m.Address:
    """One address by allocation id or public IP."""
    return await _one(ctx, who, ref)


@router.post("/{ref}/associate", response_model=m.Address)
async def address_associate(
    ref: str,
    req: m.AddressAssociate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> m.Address:
    """Point the address at an instance (its NAT is in force on the node when this answers);
    an instance has one elastic address at most, so a previous one is disassociated."""
    row = await _row(ctx, who, ref)
    with rest_fields(FIELDS):
        await ctx.controller.elastic_ips.associate(
            who, req.instance, row.id, allow_reassociation=req.allow_reassociation
        )
    return await _one(ctx, who, row.id)


@router.post("/{ref}/disassociate", response_model=m.Address)
async def address_disassociate(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> m.Address:
    row = await _row(ctx, who, ref)
    if row.instance_id:
        with rest_fields(FIELDS):
            await ctx.controller.elastic_ips.disassociate(who, public_ip=row.public_ip)
    return await _one(ctx, who, row.id)


@router.delete("/{ref}", status_code=204)
async def address_release(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Give the address back to the pool (409 while it is associated)."""
    row = await _row(ctx, who, ref)
    with rest_fields(FIELDS):
        await ctx.controller.elastic_ips.release(who, row.id)
    return Response(status_code=204)


async def _row(ctx: ApiContext, who: Caller, ref: str) -> db.ElasticAddress:
    for r in await ctx.controller.elastic_ips.list(who):
        if ref in (r.id, r.public_ip):
            return r
    raise NotFound(
        f"the address {ref} does not exist; `corral ip ls` lists yours",
        field="address",
        resource="allocation",
    )


async def _one(ctx: ApiContext, who: Caller, ref: str) -> m.Address:
    return (await _views(ctx, who, [await _row(ctx, who, ref)]))[0]


async def _views(ctx: ApiContext, who: Caller, rows: list[db.ElasticAddress]) -> list[m.Address]:
    names = {i.id: i.name for i in await ctx.controller.instances.list(who)}
    async with ctx.controller.store.read() as s:
        tag_map = await ctx.controller.tags.of(s, who.account_id, [r.id for r in rows])
    return [
        m.Address(
            id=r.id,
            public_ip=r.public_ip,
            instance_id=r.instance_id,
            instance_name=names.get(r.instance_id) if r.instance_id else None,
            association_id=r.association_id,
            private_ip=r.private_ip,
            created_at=r.created_at,
            tags=tag_map.get(r.id, {}),
        )
        for r in rows
    ]
