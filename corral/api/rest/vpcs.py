"""VPCs and subnets (issue 12): create, list, show, remove. The records and their checks are
corral/controller/vpcs.py's; the EC2 API shows the same ones (corral/api/ec2/vpcs.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy import select

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES, rest_fields
from corral.controller.accounts import Caller
from corral.store.models import Instance, InternetGateway, Subnet, Vpc

router = APIRouter(prefix="/v1/vpcs", tags=["vpcs"], responses=RESPONSES)
subnet_router = APIRouter(prefix="/v1/subnets", tags=["vpcs"], responses=RESPONSES)


def _vpc(row: Vpc, subnets: list[Subnet], igws: list[InternetGateway]) -> models.Vpc:
    return models.Vpc(
        id=row.id,
        cidr=row.cidr,
        is_default=row.is_default,
        dns_support=row.dns_support,
        dns_hostnames=row.dns_hostnames,
        internet_gateway=next((g.id for g in igws if g.vpc_id == row.id), None),
        subnets=[s.id for s in subnets if s.vpc_id == row.id],
        created_at=row.created_at,
    )


def _subnet(row: Subnet, members: list[str] | None = None) -> models.Subnet:
    return models.Subnet(
        id=row.id,
        vpc_id=row.vpc_id,
        cidr=row.cidr,
        zone=row.zone,
        is_default=row.is_default,
        map_public_ip=row.map_public_ip,
        instances=members or [],
        created_at=row.created_at,
    )


@router.get("", response_model=list[models.Vpc])
async def vpc_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.Vpc]:
    vpcs, subnets, igws = await ctx.controller.vpcs.list(who)
    return [_vpc(v, subnets, igws) for v in vpcs]


@router.post("", status_code=201, response_model=models.Vpc)
async def vpc_create(
    req: models.VpcCreate, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Vpc:
    row = await ctx.controller.vpcs.create(who, req.cidr, dns_hostnames=req.dns_hostnames)
    return _vpc(row, [], [])


@router.patch("/{vpc_id}", response_model=models.Vpc)
async def vpc_update(
    vpc_id: str,
    req: models.VpcUpdate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Vpc:
    """Turn its instances' names in the VPC's DNS on or off (EC2's enableDnsHostnames)."""
    with rest_fields({"EnableDnsHostnames": "dns_hostnames"}):
        await ctx.controller.vpcs.set_attribute(
            who, vpc_id, "enableDnsHostnames", req.dns_hostnames
        )
    return await vpc_show(vpc_id, ctx, who)


@router.get("/{vpc_id}", response_model=models.Vpc)
async def vpc_show(
    vpc_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Vpc:
    _, subnets, igws = await ctx.controller.vpcs.list(who)
    async with ctx.controller.store.read() as s:
        row = await ctx.controller.vpcs.vpc(s, who, vpc_id)
    return _vpc(row, subnets, igws)


@router.delete("/{vpc_id}", status_code=204)
async def vpc_remove(
    vpc_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    await ctx.controller.vpcs.delete(who, vpc_id)
    return Response(status_code=204)


@subnet_router.get("", response_model=list[models.Subnet])
async def subnet_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.Subnet]:
    _, subnets, _ = await ctx.controller.vpcs.list(who)
    return [_subnet(s) for s in subnets]


@subnet_router.post("", status_code=201, response_model=models.Subnet)
async def subnet_create(
    req: models.SubnetCreate, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Subnet:
    return _subnet(await ctx.controller.vpcs.create_subnet(who, req.vpc, req.cidr, req.zone))


@subnet_router.get("/{subnet_id}", response_model=models.Subnet)
async def subnet_show(
    subnet_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Subnet:
    async with ctx.controller.store.read() as s:
        row = await ctx.controller.vpcs.subnet(s, who, subnet_id)
        members = list(
            await s.scalars(
                select(Instance.id)
                .where(Instance.subnet_id == row.id, Instance.state != "terminated")
                .order_by(Instance.launch_time)
            )
        )
    return _subnet(row, members)


@subnet_router.delete("/{subnet_id}", status_code=204)
async def subnet_remove(
    subnet_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    await ctx.controller.vpcs.delete_subnet(who, subnet_id)
    return Response(status_code=204)
