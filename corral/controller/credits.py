"""CPU credits of burstable instances (types with a baseline below their ceiling): the mode
(standard | unlimited) lives on the instance row and in the spec the node gets; the balance
is kept by the node that runs the instance (node/credits.py) and asked for when shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Invalid
from corral.node.spec import CreditStatus
from corral.store.models import Instance

if TYPE_CHECKING:
    from corral.controller.service import Controller

MODES = ("standard", "unlimited")


@dataclass(frozen=True)
class CreditView:
    instance_id: str
    burstable: bool
    mode: str
    baseline: float  # cores
    ceiling: float  # cores
    status: CreditStatus | None  # the node's bucket while the instance runs


def burstable(inst: Instance) -> bool:
    return 0 < inst.cpu_baseline < (inst.cpu_limit or float(inst.cpus))


class Credits:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def show(self, caller: Caller, ref: str) -> CreditView:
        inst = await self.ctrl.instances.get(caller, ref)
        status = None
        if burstable(inst) and inst.state == "running" and inst.node_id in self.ctrl.nodes:
            status = await self.ctrl.node(inst.node_id).instance_credits(inst.id)
        return CreditView(
            instance_id=inst.id,
            burstable=burstable(inst),
            mode=inst.cpu_credits,
            baseline=inst.cpu_baseline,
            ceiling=inst.cpu_limit or float(inst.cpus),
            status=status,
        )

    async def set_mode(
        self, caller: Caller, ref: str, mode: str, dry_run: bool = False
    ) -> Instance:
        """Switch a burstable instance between standard and unlimited, at once when it runs."""
        if mode not in MODES:
            raise Invalid(
                f"CPU credits {mode!r} must be standard or unlimited",
                field="CpuCredits",
                ec2_code="InvalidParameterValue",
            )
        async with self.ctrl.store.write() as s:
            inst = await self.ctrl.instances.resolve(s, caller, ref, include_terminated=True)
            if not burstable(inst):
                raise Invalid(
                    f"instance {inst.id} ({inst.instance_type or 'custom size'}) is not "
                    "burstable: only types with a baseline below their ceiling (cb1.nano, "
                    "cb1.micro) have CPU credits",
                    field="InstanceId",
                    ec2_code="UnsupportedOperation",
                )
            if dry_run:
                raise DryRunPassed("ModifyInstanceCreditSpecification would have succeeded")
            inst.cpu_credits = mode
        if inst.state == "running" and inst.node_id in self.ctrl.nodes:
            await self.ctrl.node(inst.node_id).instance_credits(inst.id, mode)
        return inst
