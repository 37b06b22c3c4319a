"""Tags on every taggable resource: instances, images, volumes, snapshots, security groups,
elastic addresses and key pairs. A tag belongs to the account of the resource it is on."""

from __future__ import annotations

import builtins
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Invalid, NotFound
from corral.store.models import (
    ElasticAddress,
    Image,
    Instance,
    InternetGateway,
    KeyPair,
    PlacementGroup,
    SecurityGroup,
    Snapshot,
    Subnet,
    Tag,
    Volume,
    Vpc,
)

if TYPE_CHECKING:
    from corral.controller.service import Controller

MAX_TAGS = 50
KEY_MAX, VALUE_MAX = 128, 256

# id prefix -> (EC2 resource type, table, the resource kind named in errors)
KINDS: dict[str, tuple[str, type[Any], str]] = {
    "i": ("instance", Instance, "instance"),
    "ami": ("image", Image, "image"),
    "vol": ("volume", Volume, "volume"),
    "snap": ("snapshot", Snapshot, "snapshot"),
    "sg": ("security-group", SecurityGroup, "security_group"),
    "eipalloc": ("elastic-ip", ElasticAddress, "allocation"),
    "key": ("key-pair", KeyPair, "key_pair"),
    "pg": ("placement-group", PlacementGroup, "placement_group"),
    "vpc": ("vpc", Vpc, "vpc"),
    "subnet": ("subnet", Subnet, "subnet"),
    "igw": ("internet-gateway", InternetGateway, "internet_gateway"),
}


def check(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if not key or len(key) > KEY_MAX:
            raise Invalid(f"tag key {key!r} must be 1-{KEY_MAX} characters", field="Tag.Key")
        if key.lower().startswith("aws:"):
            raise Invalid(
                f"tag key {key!r}: keys starting with 'aws:' are reserved", field="Tag.Key"
            )
        if len(value) > VALUE_MAX:
            raise Invalid(
                f"tag {key!r}: values are at most {VALUE_MAX} characters", field="Tag.Value"
            )
    return tags


class Tags:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def _owned(self, s: AsyncSession, caller: Caller, rid: str) -> str:
        """The EC2 resource type of ``rid`` if the caller owns it; NotFound otherwise."""
        prefix = rid.split("-", 1)[0]
        if prefix not in KINDS or "-" not in rid:
            raise Invalid(
                f"resource id {rid!r} is not a taggable resource id (i-, ami-, vol-, "
                "snap-, sg-, eipalloc-, key-, pg-, vpc-, subnet-, igw-)",
                field="ResourceId",
                ec2_code="InvalidID",
            )
        rtype, table, kind = KINDS[prefix]
        row: Any = await s.get(table, rid)
        if row is None or row.account_id != caller.account_id:
            raise NotFound(f"the {rtype} {rid} does not exist", field="ResourceId", resource=kind)
        return rtype

    async def apply(
        self, s: AsyncSession, account_id: str, rid: str, rtype: str, tags: dict[str, str]
    ) -> None:
        """Set tags on a resource inside the caller's transaction (creation time)."""
        check(tags)
        existing = {t.key: t for t in await s.scalars(select(Tag).where(Tag.resource_id == rid))}
        if len(set(existing) | set(tags)) > MAX_TAGS:
            raise Invalid(
                f"{rid} would have more than {MAX_TAGS} tags",
                field="Tag",
                ec2_code="TagLimitExceeded",
            )
        for key, value in tags.items():
            if key in existing:
                existing[key].value = value
            else:
                s.add(
                    Tag(
                        resource_id=rid,
                        key=key,
                        value=value,
                        account_id=account_id,
                        resource_type=rtype,
                    )
                )

    async def create(
        self,
        caller: Caller,
        resource_ids: builtins.list[str],
        tags: dict[str, str],
        dry_run: bool = False,
    ) -> None:
        check(tags)
        async with self.ctrl.store.write() as s:
            for rid in resource_ids:
                rtype = await self._owned(s, caller, rid)
                await self.apply(s, caller.account_id, rid, rtype, tags)
            if dry_run:
                raise DryRunPassed("CreateTags would have succeeded")

    async def delete(
        self,
        caller: Caller,
        resource_ids: builtins.list[str],
        tags: dict[str, str | None] | None,
        dry_run: bool = False,
    ) -> None:
        """Remove the given keys (only where the value matches when one is given), or every
        tag when ``tags`` is None."""
        async with self.ctrl.store.write() as s:
            for rid in resource_ids:
                await self._owned(s, caller, rid)
            if dry_run:
                raise DryRunPassed("DeleteTags would have succeeded")
            for rid in resource_ids:
                if tags is None:
                    await s.execute(delete(Tag).where(Tag.resource_id == rid))
                    continue
                for key, value in tags.items():
                    q = delete(Tag).where(Tag.resource_id == rid, Tag.key == key)
                    if value is not None:
                        q = q.where(Tag.value == value)
                    await s.execute(q)

    async def list(self, caller: Caller) -> builtins.list[Tag]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(Tag)
                    .where(Tag.account_id == caller.account_id)
                    .order_by(Tag.resource_id, Tag.key)
                )
            )

    async def of(
        self, s: AsyncSession, account_id: str, resource_ids: builtins.list[str] | None = None
    ) -> dict[str, dict[str, str]]:
        """Tags by resource id for one account (all of its resources when ids is None)."""
        q = select(Tag.resource_id, Tag.key, Tag.value).where(Tag.account_id == account_id)
        if resource_ids is not None:
            if not resource_ids:
                return {}
            q = q.where(Tag.resource_id.in_(resource_ids))
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for rid, key, value in await s.execute(q):
            out[rid][key] = value
        return out

    async def delete_resource(self, s: AsyncSession, row: Any) -> None:
        """Delete a resource's row and its tags, in the caller's transaction: tags never
        outlive what they describe."""
        await s.execute(delete(Tag).where(Tag.resource_id == row.id))
        await s.delete(row)
