"""Appliances and replacing servers: the plan for a service file, applying it, and replacing
one instance by a new image's with the same config, volumes, address and name."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from corral import models
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.appliances.plan import Plan
from corral.appliances.spec import ApplianceSpec
from corral.controller import health
from corral.controller.accounts import Caller

router = APIRouter(tags=["appliances"], responses=RESPONSES)


@router.post("/v1/appliances/plan", response_model=Plan)
async def appliance_plan(
    spec: ApplianceSpec, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Plan:
    """What applying the service file would do (nothing is changed)."""
    return await ctx.controller.appliances.plan(who, spec)


@router.post("/v1/appliances/apply", status_code=202, response_model=models.ApplianceAccepted)
async def appliance_apply(
    spec: ApplianceSpec, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.ApplianceAccepted:
    """Converge on the service file: the plan, and the operation carrying it out."""
    plan, op = await ctx.controller.appliances.apply(who, spec)
    return models.ApplianceAccepted(
        plan=plan, operation=views.operation(op) if op is not None else None
    )


@router.post("/v1/instances/{ref}/replace", status_code=202, response_model=models.InstanceAccepted)
async def instance_replace(
    ref: str,
    req: models.ReplaceRequest,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.InstanceAccepted:
    """Upgrade a server: a new instance of ``image`` with the same config takes over its data
    volumes, private address and DNS name once healthy; the old one is then terminated. On
    failure it rolls back."""
    check = health.parse(req.check) if req.check is not None else None
    inst, op = await ctx.controller.replacements.request(
        who, ref, req.image, check, timeout=req.timeout, after_timeout=req.after_timeout
    )
    return models.InstanceAccepted(
        operation=views.operation(op), instance=views.instance(inst, "", ctx.settings.domain)
    )
