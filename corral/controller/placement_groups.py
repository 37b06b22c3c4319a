"""Placement groups (EC2's, and `corral placement-group`): ``spread`` puts each member on a
node of its own, ``cluster`` keeps members in one zone and on the same node where it has
room. The scheduler enforces them; this module keeps the records."""

from __future__ import annotations

import builtins
import re
from typing import TYPE_CHECKING

from sqlalchemy import select

from corral import ids
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Exists, Invalid, NotFound, WrongState
from corral.store.models import Instance, PlacementGroup

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from corral.controller.service import Controller

STRATEGIES = ("spread", "cluster")
NAME_RE = re.compile(r"^[\x20-\x7e]{1,255}$")


class PlacementGroups:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def resolve(self, s: AsyncSession, caller: Caller, ref: str) -> PlacementGroup:
        """The caller's group by name or by pg- id."""
        q = select(PlacementGroup).where(PlacementGroup.account_id == caller.account_id)
        q = q.where(
            PlacementGroup.id == ref
            if ids.is_id("placement_group", ref)
            else PlacementGroup.name == ref
        )
        row = await s.scalar(q)
        if row is None:
            raise NotFound(
                f"placement group {ref} does not exist; `corral placement-group ls` lists "
                "yours, `corral placement-group create NAME` makes one",
                field="placement_group",
                resource="placement_group",
                ec2_code="InvalidPlacementGroup.Unknown",
            )
        return row

    async def create(
        self,
        caller: Caller,
        name: str,
        strategy: str = "spread",
        tags: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> PlacementGroup:
        if not NAME_RE.match(name):
            raise Invalid(
                f"placement group name {name!r} must be 1-255 printable ASCII characters",
                field="name",
            )
        if strategy not in STRATEGIES:
            raise Invalid(
                f"strategy {strategy!r} is not one Corral offers; use spread (one instance "
                "per node) or cluster (together in one zone)",
                field="strategy",
            )
        async with self.ctrl.store.write() as s:
            clash = await s.scalar(
                select(PlacementGroup.id).where(
                    PlacementGroup.account_id == caller.account_id, PlacementGroup.name == name
                )
            )
            if clash is not None:
                raise Exists(
                    f"placement group {name} already exists ({clash}); pick another name",
                    field="name",
                    resource="placement_group",
                    ec2_code="InvalidPlacementGroup.Duplicate",
                )
            if dry_run:
                raise DryRunPassed("CreatePlacementGroup would have succeeded")
            row = PlacementGroup(
                id=ids.new_id("placement_group"),
                account_id=caller.account_id,
                name=name,
                strategy=strategy,
                state="available",
            )
            s.add(row)
            await s.flush()
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "placement-group", tags)
        return row

    async def list(self, caller: Caller) -> builtins.list[PlacementGroup]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(PlacementGroup)
                    .where(PlacementGroup.account_id == caller.account_id)
                    .order_by(PlacementGroup.name)
                )
            )

    async def get(self, caller: Caller, ref: str) -> PlacementGroup:
        async with self.ctrl.store.read() as s:
            return await self.resolve(s, caller, ref)

    async def members(self, caller: Caller, ref: str) -> builtins.list[Instance]:
        async with self.ctrl.store.read() as s:
            row = await self.resolve(s, caller, ref)
            return list(
                await s.scalars(
                    select(Instance)
                    .where(Instance.placement_group_id == row.id, Instance.state != "terminated")
                    .order_by(Instance.launch_time)
                )
            )

    async def delete(self, caller: Caller, ref: str, dry_run: bool = False) -> PlacementGroup:
        """Remove an empty group (members that are not terminated keep it in use)."""
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            used = await s.scalar(
                select(Instance.id).where(
                    Instance.placement_group_id == row.id, Instance.state != "terminated"
                )
            )
            if used is not None:
                raise WrongState(
                    f"placement group {row.name} is in use by {used}; terminate its "
                    "instances first",
                    resource="placement_group",
                    ec2_code="InvalidPlacementGroup.InUse",
                )
            if dry_run:
                raise DryRunPassed("DeletePlacementGroup would have succeeded")
            await self.ctrl.tags.delete_resource(s, row)
        return row
