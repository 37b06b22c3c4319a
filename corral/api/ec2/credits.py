"""CPU credits of burstable instances: DescribeInstanceCreditSpecifications and
ModifyInstanceCreditSpecification (standard | unlimited), as on AWS's T instances."""

from __future__ import annotations

import contextlib
from typing import Any

from corral.api.ec2.common import dry_run_ok
from corral.api.ec2.errors import Ec2Error, from_corral, invalid, missing
from corral.api.ec2.instances import check_ids
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES
from corral.api.ec2.registry import Call, action
from corral.controller.credits import MODES, burstable
from corral.errors import CorralError, DryRunPassed


@action(
    "DescribeInstanceCreditSpecifications",
    accepts=("InstanceId.N", *FILTERS, *PAGES, *DRY_RUN),
)
async def credits_describe(call: Call) -> dict[str, Any]:
    """The caller's burstable instances (or these ids) that are not terminated, with their
    CPU credit option."""
    wanted = call.p.strings("InstanceId")
    check_ids(wanted)
    rows = [
        i
        for i in await call.ctrl.instances.list(call.caller, include_terminated=False)
        if burstable(i)
    ]
    if wanted:
        have = {i.id for i in rows}
        gone = [w for w in wanted if w not in have]
        if gone:
            raise Ec2Error(
                "InvalidInstanceID.NotFound",
                f"The instance ID '{', '.join(gone)}' does not exist or is not a burstable "
                "instance (cb1.nano, cb1.micro)",
            )
        rows = [i for i in rows if i.id in wanted]
    match = Filters(call.p.filters(), {"instance-id": lambda i: i.id})
    rows = [i for i in rows if match(i)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(
        rows, call.p, call.action, call.caller.account_id, 5, 1000, ids_param="InstanceId"
    )
    return {
        "instanceCreditSpecificationSet": [
            {"instanceId": i.id, "cpuCredits": i.cpu_credits} for i in page
        ],
        "nextToken": token,
    }


@action(
    "ModifyInstanceCreditSpecification",
    accepts=(
        "InstanceCreditSpecification.N.InstanceId",
        "InstanceCreditSpecification.N.CpuCredits",
        "ClientToken",
        *DRY_RUN,
    ),
)
async def credits_modify(call: Call) -> dict[str, Any]:
    specs = call.p.group("InstanceCreditSpecification")
    if not specs:
        raise missing("InstanceCreditSpecification")
    asked = []
    for spec in specs:
        iid = spec.need("InstanceId")
        check_ids([iid])
        mode = spec.need("CpuCredits")
        if mode not in MODES:
            raise invalid("CpuCredits", mode, "It must be standard or unlimited.")
        asked.append((iid, mode))
    if call.dry_run:
        for iid, mode in asked:
            with contextlib.suppress(DryRunPassed):  # anything else is the answer
                await call.ctrl.credits.set_mode(call.caller, iid, mode, dry_run=True)
        dry_run_ok()
    done, failed = [], []
    for iid, mode in asked:
        try:
            await call.ctrl.credits.set_mode(call.caller, iid, mode)
            done.append({"instanceId": iid})
        except CorralError as err:
            e = from_corral(err)
            failed.append({"instanceId": iid, "error": {"code": e.code, "message": e.message}})
    return {
        "successfulInstanceCreditSpecificationSet": done,
        "unsuccessfulInstanceCreditSpecificationSet": failed,
    }
