"""Node maintenance by live migration: ``POST /v1/nodes/{ref}/drain`` (instances move one
migration operation each), ``POST /v1/nodes/{ref}/evacuate`` (stopped instances move cold, one
operation each) and ``POST /v1/rebalance`` (a plan of migrations carried out by one
operation); ``POST /v1/instances/{ref}/migrate`` is with the instances."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller

router = APIRouter(prefix="/v1/nodes", tags=["nodes"], responses=RESPONSES)
cluster = APIRouter(prefix="/v1", tags=["nodes"], responses=RESPONSES)


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


@router.post("/{ref}/evacuate", response_model=models.EvacuateResult)
async def node_evacuate(
    ref: str,
    body: models.EvacuateRequest,
    response: Response,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.EvacuateResult:
    """Cordon a node and move every stopped instance away from it cold, its disks copied to
    the destination (admin only): 202 with one operation per instance, or 200 with the plan
    alone for a dry run. Running instances stay (``drain`` moves them live)."""
    res = await ctx.controller.evacuations.evacuate(who, ref, body.to, body.dry_run)
    if not body.dry_run:
        response.status_code = 202
    return models.EvacuateResult.model_validate(res)


@cluster.post("/rebalance", response_model=models.RebalancePlan)
async def rebalance(
    body: models.RebalanceRequest,
    response: Response,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.RebalancePlan:
    """The greedy plan of live migrations that evens out the cluster (admin only): 200 with
    the plan alone for a dry run or when nothing would improve, else 202 with the operation
    that carries it out, one migration after another."""
    plan, op = await ctx.controller.migrations.rebalance(
        who, body.max_moves, body.dry_run, body.timeout
    )
    if op is not None:
        response.status_code = 202
    return models.RebalancePlan(
        score_before=plan.score_before,
        score_after=plan.score_after,
        moves=[
            models.RebalanceMove(
                instance=m.instance, id=m.id, source=m.source, target=m.target, score=m.score
            )
            for m in plan.moves
        ],
        not_moved=plan.stays,
        nodes={k: models.NodeUse(memory=v[0], cpu=v[1]) for k, v in plan.nodes.items()},
        operation=op.id if op is not None else None,
    )
