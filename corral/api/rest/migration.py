"""Node maintenance by live migration: ``POST /v1/nodes/{ref}/drain`` (instances move one
migration operation each; ``POST /v1/instances/{ref}/migrate`` is with the instances)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller

router = APIRouter(prefix="/v1/nodes", tags=["nodes"], responses=RESPONSES)


@router.post("/{ref}/drain", status_code=202, response_model=models.DrainResult)
async def node_drain(
    ref: str,
    timeout: float | None = Query(None, gt=0, le=86400, description="seconds per migration"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.DrainResult:
    """Cordon a node and live-migrate every running instance away from it (admin only)."""
    res = await ctx.controller.migrations.drain(who, ref, timeout)
    return models.DrainResult.model_validate(res)
