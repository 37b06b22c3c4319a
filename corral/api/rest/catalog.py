"""What this Corral offers: its instance types (with the CPU share of fractional ones) and its
zones (the configured one and those its nodes name), as EC2's DescribeInstanceTypes and
DescribeAvailabilityZones give them."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from corral import netmodels as m
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.controller.instance_types import CATALOG
from corral.controller.scheduler import READY
from corral.store.models import Node

router = APIRouter(prefix="/v1", tags=["catalog"], responses=RESPONSES)


@router.get("/instance-types", response_model=list[m.InstanceType])
async def instance_type_list(_who: Caller = Depends(auth)) -> list[m.InstanceType]:
    return [
        m.InstanceType(
            name=t.name,
            vcpus=t.vcpus,
            cores=t.cores,
            memory=t.memory,
            burstable=t.burstable,
            description=t.description,
        )
        for t in CATALOG.values()
    ]


@router.get("/zones", response_model=list[m.Zone])
async def zone_list(
    ctx: ApiContext = Depends(get_context), _who: Caller = Depends(auth)
) -> list[m.Zone]:
    st = ctx.settings
    async with ctx.controller.store.read() as s:
        nodes = list(await s.execute(select(Node.zone, Node.state, Node.cordoned)))
    up: dict[str, int] = {st.availability_zone: 0}
    for zone, state, cordoned in nodes:
        name = zone or st.availability_zone  # a node that names no zone is in the default one
        up.setdefault(name, 0)
        if state == READY and not cordoned:
            up[name] += 1
    return [
        m.Zone(
            name=name,
            region=st.region,
            state="available" if n else "unavailable",
            nodes=n,
        )
        for name, n in sorted(up.items())
    ]
