"""VPCs, subnets and internet gateways (EC2's, and `corral vpc` / `corral subnet`).

Every account has a default VPC, made on first use as on AWS: 172.31.0.0/16 (or the /16 that
holds the node network when Corral is configured with another ``subnet``), one default subnet
per availability zone and an attached internet gateway. The default subnet of the node's zone
*is* the node network (``networks.py``): instances launched there get their address from it,
so an instance's private address always lies in its subnet. An instance of any other subnet
runs in its VPC's own namespace on the node (controller/networks.py, issue 12,
docs/networking.md). Security groups belong to the account (its default VPC) and are enforced
in whichever VPC namespace their members run.

Each VPC has one main route table (``rtb-`` + the VPC's digits: a view, not a table) and each
instance one network interface (``eni-`` + the instance's digits)."""

from __future__ import annotations

import builtins
import ipaddress
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Invalid, NotFound, WrongState
from corral.store.models import (
    Instance,
    InstanceSecurityGroup,
    InternetGateway,
    Network,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    Tag,
    Vpc,
)

if TYPE_CHECKING:
    from corral.controller.service import Controller

DEFAULT_VPC_CIDR = "172.31.0.0/16"
DEFAULT_SUBNET_PREFIX = 20
MIN_PREFIX, MAX_PREFIX = 16, 28  # AWS's largest and smallest VPC and subnet


def route_table_id(vpc_id: str) -> str:
    return "rtb-" + vpc_id.partition("-")[2]


def interface_id(instance_id: str) -> str:
    return "eni-" + instance_id.partition("-")[2]


def _network(cidr: str, field: str, code: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as err:
        raise Invalid(
            f"{field} {cidr!r} is not an IPv4 network in CIDR form (e.g. 10.0.0.0/16): {err}",
            field=field,
            ec2_code=code,
        ) from err
    if not isinstance(net, ipaddress.IPv4Network):
        raise Invalid(f"{field} {cidr} must be IPv4", field=field, ec2_code=code)
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise Invalid(
            f"{field} {cidr}: the netmask must be between /{MIN_PREFIX} and /{MAX_PREFIX} "
            f"(/28 is the smallest, 16 addresses)",
            field=field,
            ec2_code=code,
        )
    return net


_Row = TypeVar("_Row", Vpc, Subnet, InternetGateway)


def _owned(row: _Row | None, caller: Caller, message: str, kind: str, code: str) -> _Row:
    """``row`` if it exists and is the caller's; otherwise NotFound (another account's record
    is answered exactly as a missing one, so ids reveal nothing)."""
    if row is None or row.account_id != caller.account_id:
        raise NotFound(message, field=kind, resource=kind, ec2_code=code)
    return row


class Vpcs:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    # -- the default VPC -----------------------------------------------------------------------

    def zones(self) -> builtins.list[str]:
        return [self.ctrl.settings.availability_zone]

    def _default_layout(self) -> tuple[str, builtins.list[tuple[str, str]]]:
        """The default VPC's CIDR and its (zone, subnet CIDR) pairs: the node's zone gets the
        node network; the other zones the next free /20s."""
        node_net = ipaddress.IPv4Network(self.ctrl.settings.subnet)
        vpc = ipaddress.IPv4Network(DEFAULT_VPC_CIDR)
        if not node_net.subnet_of(vpc):
            vpc = node_net.supernet(new_prefix=MIN_PREFIX) if node_net.prefixlen > 16 else node_net
        taken = [node_net]
        out = []
        free = (
            n
            for n in vpc.subnets(new_prefix=max(DEFAULT_SUBNET_PREFIX, vpc.prefixlen))
            if not any(n.overlaps(t) for t in taken)
        )
        for i, zone in enumerate(self.zones()):
            out.append((zone, str(node_net if i == 0 else next(free))))
        return str(vpc), out

    async def ensure_default(self, s: AsyncSession, account_id: str) -> Vpc | None:
        """The account's default VPC, made on first use; None after the account deleted it."""
        rows = list(
            await s.scalars(
                select(Vpc).where(Vpc.account_id == account_id, Vpc.is_default.is_(True))
            )
        )
        live = [r for r in rows if r.state == "available"]
        if live:
            await self._follow_node_network(s, live[0])
            return live[0]
        if rows:
            return None
        return await self._make_default(s, account_id)

    async def _follow_node_network(self, s: AsyncSession, vpc: Vpc) -> None:
        """After the operator changed the node network (``corral up --subnet``, allowed only
        without live instances), the default subnet of the node's zone follows it."""
        cidr, layout = self._default_layout()
        zone, net = layout[0]
        row = await s.scalar(
            select(Subnet).where(
                Subnet.vpc_id == vpc.id, Subnet.is_default.is_(True), Subnet.zone == zone
            )
        )
        if row is None or row.cidr == net:
            return
        busy = await s.scalar(
            select(Instance.id).where(Instance.subnet_id == row.id, Instance.state != "terminated")
        )
        if busy is not None:
            return
        others = await s.scalars(select(Subnet).where(Subnet.vpc_id == vpc.id, Subnet.id != row.id))
        if not any(
            ipaddress.ip_network(o.cidr).overlaps(ipaddress.ip_network(net)) for o in others
        ):
            row.cidr = net
            if not ipaddress.IPv4Network(net).subnet_of(ipaddress.IPv4Network(vpc.cidr)):
                vpc.cidr = cidr

    async def _make_default(self, s: AsyncSession, account_id: str) -> Vpc:
        cidr, subnets = self._default_layout()
        vpc = Vpc(
            id=ids.new_id("vpc"),
            account_id=account_id,
            cidr=cidr,
            is_default=True,
            dns_support=True,
            dns_hostnames=True,
            state="available",
        )
        s.add(vpc)
        await s.flush()
        for zone, net in subnets:
            s.add(
                Subnet(
                    id=ids.new_id("subnet"),
                    account_id=account_id,
                    vpc_id=vpc.id,
                    cidr=net,
                    zone=zone,
                    is_default=True,
                    # Corral's public addresses are elastic IPs only: none is mapped at launch
                    map_public_ip=False,
                )
            )
        s.add(
            InternetGateway(id=ids.new_id("internet_gateway"), account_id=account_id, vpc_id=vpc.id)
        )
        await s.flush()
        return vpc

    async def create_default(self, caller: Caller, dry_run: bool = False) -> Vpc:
        async with self.ctrl.store.write() as s:
            have = await s.scalar(
                select(Vpc).where(
                    Vpc.account_id == caller.account_id,
                    Vpc.is_default.is_(True),
                    Vpc.state == "available",
                )
            )
            if have is not None:
                raise WrongState(
                    f"the account already has a default VPC ({have.id})",
                    field="vpc",
                    resource="vpc",
                    ec2_code="DefaultVpcAlreadyExists",
                )
            if dry_run:
                raise DryRunPassed("CreateDefaultVpc would have succeeded")
            return await self._make_default(s, caller.account_id)

    async def default_vpc_id(self, s: AsyncSession, account_id: str) -> str | None:
        row = await self.ensure_default(s, account_id)
        return row.id if row is not None else None

    async def settled_default(self, account_id: str) -> str | None:
        """The account's default VPC id (None when it deleted it), made or brought in line
        with the node network in a write only when needed: Describe calls stay reads."""
        async with self.ctrl.store.read() as s:
            rows = list(
                await s.scalars(
                    select(Vpc).where(Vpc.account_id == account_id, Vpc.is_default.is_(True))
                )
            )
            live = [r for r in rows if r.state == "available"]
            if rows and not live:
                return None
            if live:
                zone, net = self._default_layout()[1][0]
                first = await s.scalar(
                    select(Subnet.cidr).where(
                        Subnet.vpc_id == live[0].id,
                        Subnet.is_default.is_(True),
                        Subnet.zone == zone,
                    )
                )
                if first in (None, net):
                    return live[0].id
        async with self.ctrl.store.write() as s:
            return await self.default_vpc_id(s, account_id)

    # -- lookups -------------------------------------------------------------------------------

    async def vpc(self, s: AsyncSession, caller: Caller, vpc_id: str) -> Vpc:
        row = await s.get(Vpc, vpc_id)
        return _owned(
            row if row is None or row.state == "available" else None,
            caller,
            f"the VPC {vpc_id} does not exist; `corral vpc ls` lists yours",
            "vpc",
            "InvalidVpcID.NotFound",
        )

    async def vpc_of(self, s: AsyncSession, inst: Instance) -> str | None:
        """The VPC of an instance's subnet (None: it has none recorded: the default VPC's)."""
        if not inst.subnet_id:
            return None
        return await s.scalar(select(Subnet.vpc_id).where(Subnet.id == inst.subnet_id))

    async def subnet(self, s: AsyncSession, caller: Caller, subnet_id: str) -> Subnet:
        return _owned(
            await s.get(Subnet, subnet_id),
            caller,
            f"the subnet {subnet_id} does not exist; `corral subnet ls` lists yours",
            "subnet",
            "InvalidSubnetID.NotFound",
        )

    async def gateway(self, s: AsyncSession, caller: Caller, igw_id: str) -> InternetGateway:
        return _owned(
            await s.get(InternetGateway, igw_id),
            caller,
            f"the internet gateway {igw_id} does not exist; DescribeInternetGateways lists yours",
            "internet_gateway",
            "InvalidInternetGatewayID.NotFound",
        )

    async def list(
        self, caller: Caller
    ) -> tuple[builtins.list[Vpc], builtins.list[Subnet], builtins.list[InternetGateway]]:
        await self.settled_default(caller.account_id)
        async with self.ctrl.store.read() as s:
            vpcs = list(
                await s.scalars(
                    select(Vpc)
                    .where(Vpc.account_id == caller.account_id, Vpc.state == "available")
                    .order_by(Vpc.created_at, Vpc.id)
                )
            )
            subnets = list(
                await s.scalars(
                    select(Subnet)
                    .where(Subnet.account_id == caller.account_id)
                    .order_by(Subnet.created_at, Subnet.id)
                )
            )
            igws = list(
                await s.scalars(
                    select(InternetGateway)
                    .where(InternetGateway.account_id == caller.account_id)
                    .order_by(InternetGateway.created_at, InternetGateway.id)
                )
            )
        return vpcs, subnets, igws

    async def launch_subnet(
        self, s: AsyncSession, caller: Caller, subnet_id: str | None, zone: str | None
    ) -> Subnet:
        """The subnet a new instance goes in: the one asked for, or the default subnet (of
        ``zone`` when given). Only a subnet whose data plane exists on the node is offered."""
        if subnet_id is not None:
            row = await self.subnet(s, caller, subnet_id)
            if zone is not None and zone != row.zone:
                raise Invalid(
                    f"subnet {row.id} is in {row.zone}, not {zone}; leave the zone out or "
                    "pick a subnet of that zone",
                    field="zone",
                    ec2_code="InvalidParameterCombination",
                )
        else:
            vpc = await self.ensure_default(s, caller.account_id)
            if vpc is None:
                raise NotFound(
                    "the account has no default VPC (it was deleted): give a subnet "
                    "(SubnetId, --subnet) or make one again with CreateDefaultVpc",
                    field="subnet",
                    resource="vpc",
                    ec2_code="VPCIdNotSpecified",
                )
            want = zone if zone in self.zones() else self.zones()[0]
            found = await s.scalar(
                select(Subnet).where(
                    Subnet.vpc_id == vpc.id, Subnet.is_default.is_(True), Subnet.zone == want
                )
            )
            if found is None:
                raise NotFound(
                    f"the default VPC {vpc.id} has no default subnet in {want}; give a subnet",
                    field="subnet",
                    resource="subnet",
                    ec2_code="MissingInput",
                )
            row = found
        vpc_row = await s.get(Vpc, row.vpc_id)
        node_net = str(ipaddress.IPv4Network(self.ctrl.settings.subnet))
        if (
            vpc_row is not None
            and vpc_row.is_default
            and not (row.is_default and row.cidr == node_net and row.zone == self.zones()[0])
        ):
            raise Invalid(
                f"subnet {row.id} ({row.cidr}) has no data plane on this Corral yet: the "
                f"default VPC's instances run in its default subnet ({node_net}); leave the "
                "subnet out, or make a VPC (CreateVpc, CreateSubnet) and launch into its subnet",
                field="subnet",
                ec2_code="UnsupportedOperation",
            )
        # a non-default VPC's subnet runs in the VPC's own namespace on the node
        # (controller/networks.py, ``for_subnet``)
        return row

    # -- VPCs ----------------------------------------------------------------------------------

    async def create(
        self,
        caller: Caller,
        cidr: str,
        tags: dict[str, str] | None = None,
        dry_run: bool = False,
        dns_hostnames: bool = False,
    ) -> Vpc:
        net = _network(cidr, "CidrBlock", "InvalidVpc.Range")
        async with self.ctrl.store.write() as s:
            await self.ensure_default(s, caller.account_id)
            row = Vpc(
                id=ids.new_id("vpc"),
                account_id=caller.account_id,
                cidr=str(net),
                is_default=False,
                dns_support=True,
                dns_hostnames=dns_hostnames,
                state="available",
            )
            s.add(row)
            await s.flush()
            await self.ctrl.security_groups.ensure_default(s, caller.account_id, row.id)
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "vpc", tags)
            if dry_run:
                raise DryRunPassed("CreateVpc would have succeeded")
        return row

    async def delete(self, caller: Caller, vpc_id: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.vpc(s, caller, vpc_id)
            subnets = list(await s.scalars(select(Subnet.id).where(Subnet.vpc_id == row.id)))
            if subnets:
                raise WrongState(
                    f"the VPC {row.id} still has subnets ({', '.join(subnets)}); delete them first",
                    field="vpc",
                    resource="vpc",
                    ec2_code="DependencyViolation",
                )
            igw = await s.scalar(select(InternetGateway.id).where(InternetGateway.vpc_id == row.id))
            if igw is not None:
                raise WrongState(
                    f"the VPC {row.id} has the internet gateway {igw} attached; detach it first",
                    field="vpc",
                    resource="vpc",
                    ec2_code="DependencyViolation",
                )
            groups = list(
                await s.scalars(
                    select(SecurityGroup).where(
                        SecurityGroup.account_id == row.account_id, SecurityGroup.vpc_id == row.id
                    )
                )
            )
            others = sorted(g.id for g in groups if g.name != "default")
            if others:
                raise WrongState(
                    f"the VPC {row.id} still has security groups ({', '.join(others)}); "
                    "delete them first",
                    field="vpc",
                    resource="vpc",
                    ec2_code="DependencyViolation",
                )
            if dry_run:
                raise DryRunPassed("DeleteVpc would have succeeded")
            for g in groups:  # its default group goes with it (its members are terminated)
                await s.execute(
                    delete(InstanceSecurityGroup).where(InstanceSecurityGroup.group_id == g.id)
                )
                await s.execute(delete(SecurityGroupRule).where(SecurityGroupRule.group_id == g.id))
                await self.ctrl.tags.delete_resource(s, g)
            if row.is_default:
                row.state = "deleted"  # the mark that the account had one
                await s.execute(delete(Tag).where(Tag.resource_id == row.id))
            else:
                await self.ctrl.tags.delete_resource(s, row)

    async def set_attribute(
        self, caller: Caller, vpc_id: str, name: str, value: bool, dry_run: bool = False
    ) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.vpc(s, caller, vpc_id)
            changed = False
            if name == "enableDnsSupport":
                if not value and row.dns_hostnames:
                    raise Invalid(
                        "enableDnsSupport cannot be turned off while enableDnsHostnames is on; "
                        "turn enableDnsHostnames off first",
                        field="EnableDnsSupport",
                        ec2_code="InvalidParameterValue",
                    )
                if not value:
                    raise Invalid(
                        "Corral's DNS answers in every VPC; enableDnsSupport stays true",
                        field="EnableDnsSupport",
                        ec2_code="UnsupportedOperation",
                    )
                row.dns_support = value
            elif name == "enableDnsHostnames":
                if not value and row.is_default:
                    raise Invalid(
                        "the default VPC keeps enableDnsHostnames on: its subnets are the "
                        "nodes' shared networks, where every instance has its name; use a VPC "
                        "of your own (CreateVpc) for instances without names",
                        field="EnableDnsHostnames",
                        ec2_code="UnsupportedOperation",
                    )
                if value and not row.dns_support:
                    raise Invalid(
                        "enableDnsHostnames needs enableDnsSupport",
                        field="EnableDnsHostnames",
                        ec2_code="InvalidParameterValue",
                    )
                changed = row.dns_hostnames != value
                row.dns_hostnames = value
            else:  # the front doors ask only for these two
                raise Invalid(f"unknown VPC attribute {name}", field="Attribute")
            if dry_run:
                raise DryRunPassed("ModifyVpcAttribute would have succeeded")
            pushes = None
            if changed:  # the VPC's subnets' names, on every node, with the attribute
                nets = await s.scalars(
                    select(Network.id)
                    .join(Subnet, Subnet.id == Network.name)
                    .where(Subnet.vpc_id == row.id, Network.transit.is_not(None))
                )
                why = "a VPC's DNS hostnames changed"
                pushes = await self.ctrl.network_pushes.record(s, list(nets), why=why)
        if pushes is not None:
            await self.ctrl.network_pushes.settle(pushes)

    # -- subnets -------------------------------------------------------------------------------

    async def create_subnet(
        self,
        caller: Caller,
        vpc_id: str,
        cidr: str,
        zone: str | None = None,
        tags: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> Subnet:
        net = _network(cidr, "CidrBlock", "InvalidSubnet.Range")
        zone = zone or self.zones()[0]
        if zone not in self.zones():
            raise Invalid(
                f"availability zone {zone!r} does not exist; subnets can be made in "
                f"{', '.join(self.zones())}",
                field="AvailabilityZone",
                ec2_code="InvalidParameterValue",
            )
        async with self.ctrl.store.write() as s:
            vpc = await self.vpc(s, caller, vpc_id)
            if not net.subnet_of(ipaddress.IPv4Network(vpc.cidr)):
                raise Invalid(
                    f"the CIDR {net} is not inside the VPC {vpc.id} ({vpc.cidr}); pick one in it",
                    field="CidrBlock",
                    ec2_code="InvalidSubnet.Range",
                )
            for other in await s.scalars(select(Subnet).where(Subnet.vpc_id == vpc.id)):
                if net.overlaps(ipaddress.IPv4Network(other.cidr)):
                    raise Invalid(
                        f"the CIDR {net} conflicts with subnet {other.id} ({other.cidr}) of "
                        f"the VPC {vpc.id}; pick one apart",
                        field="CidrBlock",
                        ec2_code="InvalidSubnet.Conflict",
                    )
            row = Subnet(
                id=ids.new_id("subnet"),
                account_id=caller.account_id,
                vpc_id=vpc.id,
                cidr=str(net),
                zone=zone,
                is_default=False,
                map_public_ip=False,
            )
            s.add(row)
            await s.flush()
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "subnet", tags)
            if dry_run:
                raise DryRunPassed("CreateSubnet would have succeeded")
        return row

    async def delete_subnet(self, caller: Caller, subnet_id: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.subnet(s, caller, subnet_id)
            users = list(
                await s.scalars(
                    select(Instance.id).where(
                        Instance.subnet_id == row.id, Instance.state != "terminated"
                    )
                )
            )
            if users:
                raise WrongState(
                    f"the subnet {row.id} still has instances ({', '.join(users)}); terminate "
                    "them first",
                    field="subnet",
                    resource="subnet",
                    ec2_code="DependencyViolation",
                )
            if dry_run:
                raise DryRunPassed("DeleteSubnet would have succeeded")
            await self.ctrl.tags.delete_resource(s, row)

    async def set_map_public_ip(
        self, caller: Caller, subnet_id: str, value: bool, dry_run: bool = False
    ) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.subnet(s, caller, subnet_id)
            if value:
                raise Invalid(
                    "MapPublicIpOnLaunch=true: Corral's public addresses are elastic IPs; "
                    "allocate one (AllocateAddress, `corral eip`) and associate it instead",
                    field="MapPublicIpOnLaunch",
                    ec2_code="UnsupportedOperation",
                )
            if dry_run:
                raise DryRunPassed("ModifySubnetAttribute would have succeeded")
            row.map_public_ip = value

    # -- internet gateways ---------------------------------------------------------------------

    async def create_gateway(
        self, caller: Caller, tags: dict[str, str] | None = None, dry_run: bool = False
    ) -> InternetGateway:
        async with self.ctrl.store.write() as s:
            row = InternetGateway(id=ids.new_id("internet_gateway"), account_id=caller.account_id)
            s.add(row)
            await s.flush()
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "internet-gateway", tags)
            if dry_run:
                raise DryRunPassed("CreateInternetGateway would have succeeded")
        return row

    async def attach_gateway(
        self, caller: Caller, igw_id: str, vpc_id: str, dry_run: bool = False
    ) -> None:
        async with self.ctrl.store.write() as s:
            igw = await self.gateway(s, caller, igw_id)
            vpc = await self.vpc(s, caller, vpc_id)
            if igw.vpc_id is not None:
                raise WrongState(
                    f"the internet gateway {igw.id} is already attached to {igw.vpc_id}",
                    field="internet_gateway",
                    resource="internet_gateway",
                    ec2_code="Resource.AlreadyAssociated",
                )
            other = await s.scalar(
                select(InternetGateway.id).where(InternetGateway.vpc_id == vpc.id)
            )
            if other is not None:
                raise WrongState(
                    f"the VPC {vpc.id} already has the internet gateway {other}",
                    field="vpc",
                    resource="vpc",
                    ec2_code="Resource.AlreadyAssociated",
                )
            if dry_run:
                raise DryRunPassed("AttachInternetGateway would have succeeded")
            igw.vpc_id = vpc.id

    async def detach_gateway(
        self, caller: Caller, igw_id: str, vpc_id: str, dry_run: bool = False
    ) -> None:
        async with self.ctrl.store.write() as s:
            igw = await self.gateway(s, caller, igw_id)
            await self.vpc(s, caller, vpc_id)
            if igw.vpc_id != vpc_id:
                raise WrongState(
                    f"the internet gateway {igw.id} is not attached to {vpc_id}",
                    field="internet_gateway",
                    resource="internet_gateway",
                    ec2_code="Gateway.NotAttached",
                )
            if dry_run:
                raise DryRunPassed("DetachInternetGateway would have succeeded")
            igw.vpc_id = None

    async def delete_gateway(self, caller: Caller, igw_id: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            igw = await self.gateway(s, caller, igw_id)
            if igw.vpc_id is not None:
                raise WrongState(
                    f"the internet gateway {igw.id} is attached to {igw.vpc_id}; detach it first",
                    field="internet_gateway",
                    resource="internet_gateway",
                    ec2_code="DependencyViolation",
                )
            if dry_run:
                raise DryRunPassed("DeleteInternetGateway would have succeeded")
            await self.ctrl.tags.delete_resource(s, igw)
