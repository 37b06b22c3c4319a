"""A burstable instance's CPU credits: its mode, baseline, ceiling and (while it runs) the
balance its node keeps; the mode switched between standard and unlimited."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.controller.credits import CreditView

router = APIRouter(prefix="/v1/instances", tags=["instances"], responses=RESPONSES)


def view(v: CreditView) -> models.InstanceCredits:
    st = v.status
    return models.InstanceCredits(
        instance_id=v.instance_id,
        burstable=v.burstable,
        mode=v.mode,
        baseline=v.baseline,
        ceiling=v.ceiling,
        balance=st.balance if st else None,
        maximum=st.maximum if st else None,
        surplus=st.surplus if st else None,
        held=st.held if st else None,
        quota=st.quota if st else None,
    )


@router.get("/{ref}/credits", response_model=models.InstanceCredits)
async def instance_credits(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.InstanceCredits:
    """CPU credits of an instance (the balance only while it runs)."""
    return view(await ctx.controller.credits.show(who, ref))


@router.put("/{ref}/credits", response_model=models.InstanceCredits)
async def instance_credits_set(
    ref: str,
    req: models.CreditModeSet,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.InstanceCredits:
    """Switch a burstable instance between standard and unlimited (at once if it runs)."""
    await ctx.controller.credits.set_mode(who, ref, req.mode)
    return view(await ctx.controller.credits.show(who, ref))
