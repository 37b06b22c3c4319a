"""Elastic addresses: public addresses from the configured pool (``public_cidr``), allocated to
an account and associated with one of its instances. Each change is pushed to the node as one
nft transaction (1:1 DNAT/SNAT maps, so a move is never routed to nobody or to both), and, when
public DNS is configured, `<name>.<zone>` follows: removed before an address can be reused."""

from __future__ import annotations

import builtins
import ipaddress
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import network_push, quotas
from corral.controller.accounts import Caller
from corral.errors import (
    CorralError,
    DryRunPassed,
    Invalid,
    NoResources,
    NotFound,
    WrongState,
)
from corral.store.models import ElasticAddress, Instance

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)


class ElasticIps:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def _find(
        self, s: AsyncSession, caller: Caller, allocation_id: str | None, public_ip: str | None
    ) -> ElasticAddress:
        if allocation_id:
            if not ids.is_id("allocation", allocation_id):
                raise Invalid(
                    f"allocation id {allocation_id!r} is malformed",
                    field="AllocationId",
                    ec2_code="InvalidAllocationID.Malformed",
                )
            row = await s.get(ElasticAddress, allocation_id)
            what, field = allocation_id, "AllocationId"
        elif public_ip:
            row = await s.scalar(
                select(ElasticAddress).where(ElasticAddress.public_ip == public_ip)
            )
            what, field = public_ip, "PublicIp"
        else:
            raise Invalid(
                "give AllocationId or PublicIp", field="AllocationId", ec2_code="MissingParameter"
            )
        if row is None or row.account_id != caller.account_id:
            code = "InvalidAllocationID.NotFound" if allocation_id else "InvalidAddress.NotFound"
            raise NotFound(
                f"the address {what} does not exist",
                field=field,
                resource="allocation",
                ec2_code=code,
            )
        return row

    async def allocate(
        self,
        caller: Caller,
        dry_run: bool = False,
        tags: dict[str, str] | None = None,
        domain: str = "vpc",
    ) -> ElasticAddress:
        pool = ipaddress.ip_network(self.ctrl.settings.public_cidr)
        async with self.ctrl.store.write() as s:
            used = set(await s.scalars(select(ElasticAddress.public_ip)))
            # the first and last host addresses are the uplink's two ends
            hosts = list(pool.hosts())[1:-1]
            free = next((str(a) for a in hosts if str(a) not in used), None)
            if free is None:
                raise NoResources(
                    f"every address of the pool {pool} is allocated; release one first",
                    resource="allocation",
                    ec2_code="AddressLimitExceeded",
                )
            row = ElasticAddress(
                id=ids.new_id("allocation"),
                account_id=caller.account_id,
                public_ip=free,
                domain=domain,
            )
            s.add(row)
            await quotas.enforce(s, self.ctrl.settings, caller.account_id, "elastic_ips")
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "elastic-ip", tags)
            if dry_run:
                raise DryRunPassed("AllocateAddress would have succeeded")
        return row

    async def associate(
        self,
        caller: Caller,
        instance_ref: str,
        allocation_id: str | None = None,
        public_ip: str | None = None,
        allow_reassociation: bool = False,
        dry_run: bool = False,
    ) -> ElasticAddress:
        async with self.ctrl.store.write() as s:
            row = await self._find(s, caller, allocation_id, public_ip)
            inst = await self.ctrl.instances.resolve(
                s, caller, instance_ref, include_terminated=True
            )
            if inst.state in ("terminated", "shutting-down"):
                raise WrongState(
                    f"instance {inst.id} is {inst.state}",
                    resource="instance",
                    ec2_code="IncorrectInstanceState",
                )
            if row.instance_id and row.instance_id != inst.id and not allow_reassociation:
                raise WrongState(
                    f"address {row.public_ip} is associated with "
                    f"{row.instance_id}; pass AllowReassociation or disassociate "
                    "it first",
                    resource="allocation",
                    ec2_code="Resource.AlreadyAssociated",
                )
            if dry_run:
                raise DryRunPassed("AssociateAddress would have succeeded")
            # an instance has at most one elastic address: the new one replaces the old
            for other in await s.scalars(
                select(ElasticAddress).where(
                    ElasticAddress.instance_id == inst.id, ElasticAddress.id != row.id
                )
            ):
                other.instance_id = other.association_id = other.private_ip = None
            moved_from = row.instance_id if row.instance_id != inst.id else None
            if row.instance_id != inst.id:
                row.association_id = ids.new_id("association")
            row.instance_id = inst.id
            row.private_ip = inst.private_ip
            before = await s.get(Instance, moved_from) if moved_from else None
            old_name = before.name if before is not None else None
            # the NAT push is recorded with the association (controller/network_push.py): the
            # instance's network, and the one it was taken from
            nets = await network_push.instance_networks(s, [inst.id, moved_from])
            pushes = await self.ctrl.network_pushes.record(s, nets, why="an elastic address moved")
        waiting = await self.ctrl.network_pushes.settle(pushes)
        await self.publish(
            inst.node_id,
            put={inst.name: row.public_ip},
            remove=[old_name] if old_name else [],
            strict=not waiting,  # a node that did not take the push: its DNS waits too
        )
        return row

    async def publish(
        self,
        node_id: str | None,
        put: dict[str, str] | None = None,
        remove: builtins.list[str] | None = None,
        strict: bool = True,
    ) -> None:
        """Public DNS records through the node (a no-op unless dns_server is set)."""
        if node_id is None or not self.ctrl.settings.dns_server:
            return
        try:
            await self.ctrl.node(node_id).dns_update(put or {}, remove or [])
        except CorralError as err:
            if strict:
                raise
            log.warning("public DNS update failed: %s", err.message)

    async def disassociate(
        self,
        caller: Caller,
        association_id: str | None = None,
        public_ip: str | None = None,
        dry_run: bool = False,
    ) -> None:
        async with self.ctrl.store.write() as s:
            if association_id:
                row = await s.scalar(
                    select(ElasticAddress).where(ElasticAddress.association_id == association_id)
                )
                if row is None or row.account_id != caller.account_id:
                    raise NotFound(
                        f"the association {association_id} does not exist",
                        field="AssociationId",
                        resource="association",
                        ec2_code="InvalidAssociationID.NotFound",
                    )
            else:
                row = await self._find(s, caller, None, public_ip)
            if dry_run:
                raise DryRunPassed("DisassociateAddress would have succeeded")
            inst = await s.get(Instance, row.instance_id) if row.instance_id else None
        if inst is not None:
            # the record goes first: the address must not answer for this name once reused
            await self.publish(inst.node_id, remove=[inst.name])
        async with self.ctrl.store.write() as s:
            row2 = await s.get(ElasticAddress, row.id)
            if row2 is not None:
                row2.instance_id = row2.association_id = row2.private_ip = None
            nets = await network_push.instance_networks(s, [inst.id if inst else None])
            pushes = await self.ctrl.network_pushes.record(s, nets, why="an elastic address moved")
        await self.ctrl.network_pushes.settle(pushes)

    async def release(
        self,
        caller: Caller,
        allocation_id: str | None = None,
        public_ip: str | None = None,
        dry_run: bool = False,
    ) -> None:
        async with self.ctrl.store.write() as s:
            row = await self._find(s, caller, allocation_id, public_ip)
            if row.instance_id:
                raise WrongState(
                    f"address {row.public_ip} is associated with "
                    f"{row.instance_id}; disassociate it first",
                    resource="allocation",
                    ec2_code="InvalidIPAddress.InUse",
                )
            if dry_run:
                raise DryRunPassed("ReleaseAddress would have succeeded")
            await self.ctrl.tags.delete_resource(s, row)

    async def list(self, caller: Caller) -> builtins.list[ElasticAddress]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(ElasticAddress)
                    .where(ElasticAddress.account_id == caller.account_id)
                    .order_by(ElasticAddress.created_at)
                )
            )

    async def by_instance(
        self, s: AsyncSession, instance_ids: builtins.list[str]
    ) -> dict[str, str]:
        if not instance_ids:
            return {}
        rows = await s.execute(
            select(ElasticAddress.instance_id, ElasticAddress.public_ip).where(
                ElasticAddress.instance_id.in_(instance_ids)
            )
        )
        return {iid: ip for iid, ip in rows if iid}

    async def on_instance_terminated(self, s: AsyncSession, iid: str) -> None:
        """Called in the terminating transaction; the caller pushes the policy afterwards."""
        for row in await s.scalars(select(ElasticAddress).where(ElasticAddress.instance_id == iid)):
            row.instance_id = row.association_id = row.private_ip = None
