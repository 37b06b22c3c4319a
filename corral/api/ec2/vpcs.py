"""VPCs, subnets, internet gateways, route tables and network interfaces (corral/controller/
vpcs.py keeps the records): Create/Delete/DescribeVpcs, Describe/ModifyVpcAttribute,
CreateDefaultVpc, Create/Delete/DescribeSubnets, ModifySubnetAttribute, the internet gateway
calls, DescribeRouteTables (each VPC's main table) and DescribeNetworkInterfaces (instances'
interfaces)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from corral import ids
from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok, not_found
from corral.api.ec2.errors import Ec2Error, invalid, missing
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES, TAG_SPECS
from corral.api.ec2.registry import Call, action
from corral.controller import tags
from corral.controller.vpcs import interface_id, route_table_id
from corral.naming import private_dns_name
from corral.store.models import ElasticAddress, InternetGateway, Subnet, Vpc

Tagged = dict[str, dict[str, str]]


def _check(values: list[str], kind: str, code: str) -> None:
    for v in values:
        if not ids.is_id(kind, v):
            raise Ec2Error(
                f"{code}.Malformed", f'Invalid id: "{v}" (expecting "{ids.PREFIXES[kind]}-...")'
            )


def _pick(rows: list[Any], wanted: list[str], code: str, what: str) -> list[Any]:
    if not wanted:
        return rows
    have = {r.id for r in rows}
    gone = [w for w in wanted if w not in have]
    if gone:
        raise not_found(code, what, gone)
    return [r for r in rows if r.id in wanted]


def _wanted(call: Call, param: str, kind: str, code: str) -> list[str]:
    """The ids a Describe asks for (``Param.N``), each checked for its shape."""
    wanted = call.p.strings(param)
    _check(wanted, kind, code)
    return wanted


def _page(
    call: Call,
    rows: list[Any],
    getters: dict[str, Callable[[Any], Any]],
    id_param: str,
    tag_map: Tagged | None = None,
    absent: tuple[str, ...] = (),
    most: int = 1000,
) -> tuple[list[Any], str | None]:
    """The common tail of every Describe here: AWS's filters, DryRun, then one page."""
    tagged = tag_map or {}
    match = Filters(call.p.filters(), getters, lambda r: tagged.get(r.id, {}), absent=absent)
    rows = [r for r in rows if match(r)]
    if call.dry_run:
        dry_run_ok()
    return paginate(rows, call.p, call.action, call.caller.account_id, 5, most, id_param)


async def _tags(call: Call, rids: list[str]) -> Tagged:
    async with call.ctrl.store.read() as s:
        return await call.ctrl.tags.of(s, call.caller.account_id, rids)


def _bool_value(call: Call, name: str) -> bool | None:
    raw = call.p.get(f"{name}.Value")
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise invalid(f"{name}.Value", raw, "It must be true or false.")
    return raw.lower() == "true"


# -- VPCs ------------------------------------------------------------------------------------


def _vpc(row: Vpc, tag_map: Tagged) -> dict[str, Any]:
    return {
        "vpcId": row.id,
        "ownerId": row.account_id,
        "state": "available",
        "cidrBlock": row.cidr,
        "cidrBlockAssociationSet": [
            {
                "associationId": "vpc-cidr-assoc-" + row.id.partition("-")[2],
                "cidrBlock": row.cidr,
                "cidrBlockState": {"state": "associated"},
            }
        ],
        "ipv6CidrBlockAssociationSet": [],
        "dhcpOptionsId": "default",
        "instanceTenancy": "default",
        "isDefault": row.is_default,
        "tagSet": views.tag_set(tag_map.get(row.id)),
    }


@action(
    "CreateVpc",
    accepts=("CidrBlock", "InstanceTenancy", "AmazonProvidedIpv6CidrBlock", *TAG_SPECS, *DRY_RUN),
    unsupported=(
        "Ipv4IpamPoolId",
        "Ipv4NetmaskLength",
        "Ipv6IpamPoolId",
        "Ipv6NetmaskLength",
        "Ipv6Pool",
        "Ipv6CidrBlock",
        "Ipv6CidrBlockNetworkBorderGroup",
        "VpcEncryptionControl.*",
    ),
)
async def vpc_create(call: Call) -> dict[str, Any]:
    p = call.p
    cidr = p.need("CidrBlock")
    if (p.get("InstanceTenancy") or "default") != "default":
        raise invalid("InstanceTenancy", p.get("InstanceTenancy"), "Corral offers default only.")
    if p.flag("AmazonProvidedIpv6CidrBlock"):
        raise Ec2Error("UnsupportedOperation", "Corral's VPCs are IPv4 only")
    wanted = tags.check(p.tag_specs(("vpc",)).get("vpc", {}))
    row = await call.ctrl.vpcs.create(call.caller, cidr, wanted, dry_run=call.dry_run)
    return {"vpc": _vpc(row, {row.id: wanted})}


@action("CreateDefaultVpc", accepts=DRY_RUN)
async def vpc_create_default(call: Call) -> dict[str, Any]:
    row = await call.ctrl.vpcs.create_default(call.caller, dry_run=call.dry_run)
    return {"vpc": _vpc(row, {})}


@action("DeleteVpc", accepts=("VpcId", *DRY_RUN))
async def vpc_delete(call: Call) -> dict[str, Any]:
    vpc_id = call.p.need("VpcId")
    _check([vpc_id], "vpc", "InvalidVpcID")
    await call.ctrl.vpcs.delete(call.caller, vpc_id, dry_run=call.dry_run)
    return {"return": True}


@action("DescribeVpcs", accepts=("VpcId.N", *FILTERS, *PAGES, *DRY_RUN))
async def vpc_describe(call: Call) -> dict[str, Any]:
    wanted = _wanted(call, "VpcId", "vpc", "InvalidVpcID")
    vpcs, _, _ = await call.ctrl.vpcs.list(call.caller)
    rows = _pick(vpcs, wanted, "InvalidVpcID.NotFound", "vpc ID")
    tag_map = await _tags(call, [r.id for r in rows])
    page, token = _page(
        call,
        rows,
        {
            "vpc-id": lambda r: r.id,
            "cidr": lambda r: r.cidr,
            "cidr-block-association.cidr-block": lambda r: r.cidr,
            "cidr-block-association.state": lambda r: "associated",
            "dhcp-options-id": lambda r: "default",
            "is-default": lambda r: r.is_default,
            "owner-id": lambda r: r.account_id,
            "state": lambda r: "available",
        },
        "VpcId",
        tag_map,
        absent=(
            "cidr-block-association.association-id",
            "ipv6-cidr-block-association.ipv6-cidr-block",
            "ipv6-cidr-block-association.ipv6-pool",
            "ipv6-cidr-block-association.association-id",
            "ipv6-cidr-block-association.state",
        ),
    )
    return {"vpcSet": [_vpc(r, tag_map) for r in page], "nextToken": token}


VPC_ATTRIBUTES = {"enableDnsSupport": "dns_support", "enableDnsHostnames": "dns_hostnames"}


@action("DescribeVpcAttribute", accepts=("VpcId", "Attribute", *DRY_RUN))
async def vpc_attribute_describe(call: Call) -> dict[str, Any]:
    vpc_id, name = call.p.need("VpcId"), call.p.need("Attribute")
    _check([vpc_id], "vpc", "InvalidVpcID")
    if name not in VPC_ATTRIBUTES:
        raise invalid(
            "Attribute", name, "Corral's VPCs have enableDnsSupport and enableDnsHostnames."
        )
    async with call.ctrl.store.read() as s:
        row = await call.ctrl.vpcs.vpc(s, call.caller, vpc_id)
    if call.dry_run:
        dry_run_ok()
    return {"vpcId": row.id, name: {"value": getattr(row, VPC_ATTRIBUTES[name])}}


@action(
    "ModifyVpcAttribute",
    accepts=("VpcId", "EnableDnsSupport.Value", "EnableDnsHostnames.Value"),
    unsupported=("EnableNetworkAddressUsageMetrics.*",),
)
async def vpc_attribute_modify(call: Call) -> dict[str, Any]:
    vpc_id = call.p.need("VpcId")
    _check([vpc_id], "vpc", "InvalidVpcID")
    support = _bool_value(call, "EnableDnsSupport")
    hostnames = _bool_value(call, "EnableDnsHostnames")
    if (support is None) == (hostnames is None):
        raise Ec2Error(
            "InvalidParameterCombination",
            "give exactly one attribute: EnableDnsSupport.Value or EnableDnsHostnames.Value",
        )
    if support is not None:
        await call.ctrl.vpcs.set_attribute(
            call.caller, vpc_id, "enableDnsSupport", support, dry_run=call.dry_run
        )
    else:
        assert hostnames is not None
        await call.ctrl.vpcs.set_attribute(
            call.caller, vpc_id, "enableDnsHostnames", hostnames, dry_run=call.dry_run
        )
    return {"return": True}


# -- subnets ---------------------------------------------------------------------------------


def _free(call: Call, row: Subnet, used: dict[str, int]) -> int:
    """Addresses left for instances: AWS keeps five per subnet; the node network keeps its
    own reserved low addresses (controller/ipam.py)."""
    size = ipaddress.IPv4Network(row.cidr).num_addresses - 5
    return max(0, size - used.get(row.id, 0))


def _subnet(call: Call, row: Subnet, tag_map: Tagged, used: dict[str, int]) -> dict[str, Any]:
    st = call.api.settings
    return {
        "subnetId": row.id,
        "subnetArn": f"arn:aws:ec2:{st.region}:{row.account_id}:subnet/{row.id}",
        "state": "available",
        "vpcId": row.vpc_id,
        "ownerId": row.account_id,
        "cidrBlock": row.cidr,
        "ipv6CidrBlockAssociationSet": [],
        "availableIpAddressCount": _free(call, row, used),
        "availabilityZone": row.zone,
        "availabilityZoneId": _zone_id(call, row.zone),
        "defaultForAz": row.is_default,
        "mapPublicIpOnLaunch": row.map_public_ip,
        "mapCustomerOwnedIpOnLaunch": False,
        "assignIpv6AddressOnCreation": False,
        "ipv6Native": False,
        "enableDns64": False,
        "tagSet": views.tag_set(tag_map.get(row.id)),
    }


def _zone_id(call: Call, zone: str) -> str:
    from corral.api.ec2.instances import zone_id

    return zone_id(call.api.settings.region)


@action(
    "CreateSubnet",
    accepts=("VpcId", "CidrBlock", "AvailabilityZone", "AvailabilityZoneId", *TAG_SPECS, *DRY_RUN),
    unsupported=(
        "Ipv6CidrBlock",
        "Ipv6Native",
        "OutpostArn",
        "Ipv4IpamPoolId",
        "Ipv4NetmaskLength",
        "Ipv6IpamPoolId",
        "Ipv6NetmaskLength",
    ),
)
async def subnet_create(call: Call) -> dict[str, Any]:
    p = call.p
    vpc_id, cidr = p.need("VpcId"), p.get("CidrBlock")
    if cidr is None:
        raise missing("CidrBlock")
    _check([vpc_id], "vpc", "InvalidVpcID")
    zone = p.get("AvailabilityZone")
    zid = p.get("AvailabilityZoneId")
    if zid is not None:
        if zid != _zone_id(call, ""):
            raise invalid("AvailabilityZoneId", zid, f"This Corral has {_zone_id(call, '')}.")
        if zone is not None:
            raise Ec2Error(
                "InvalidParameterCombination", "give AvailabilityZone or AvailabilityZoneId"
            )
        zone = call.api.settings.availability_zone
    wanted = tags.check(p.tag_specs(("subnet",)).get("subnet", {}))
    row = await call.ctrl.vpcs.create_subnet(
        call.caller, vpc_id, cidr, zone, wanted, dry_run=call.dry_run
    )
    return {"subnet": _subnet(call, row, {row.id: wanted}, {})}


@action("DeleteSubnet", accepts=("SubnetId", *DRY_RUN))
async def subnet_delete(call: Call) -> dict[str, Any]:
    sid = call.p.need("SubnetId")
    _check([sid], "subnet", "InvalidSubnetID")
    await call.ctrl.vpcs.delete_subnet(call.caller, sid, dry_run=call.dry_run)
    return {"return": True}


@action("DescribeSubnets", accepts=("SubnetId.N", *FILTERS, *PAGES, *DRY_RUN))
async def subnet_describe(call: Call) -> dict[str, Any]:
    wanted = _wanted(call, "SubnetId", "subnet", "InvalidSubnetID")
    _, subnets, _ = await call.ctrl.vpcs.list(call.caller)
    rows = _pick(subnets, wanted, "InvalidSubnetID.NotFound", "subnet ID")
    tag_map = await _tags(call, [r.id for r in rows])
    used = await _used(call)
    zid = _zone_id(call, "")
    page, token = _page(
        call,
        rows,
        {
            "subnet-id": lambda r: r.id,
            "vpc-id": lambda r: r.vpc_id,
            "cidr-block": lambda r: r.cidr,
            "cidr": lambda r: r.cidr,
            "cidrBlock": lambda r: r.cidr,
            "availability-zone": lambda r: r.zone,
            "availabilityZone": lambda r: r.zone,
            "availability-zone-id": lambda r: zid,
            "default-for-az": lambda r: r.is_default,
            "defaultForAz": lambda r: r.is_default,
            "map-public-ip-on-launch": lambda r: r.map_public_ip,
            "map-customer-owned-ip-on-launch": lambda r: False,
            "enable-dns64": lambda r: False,
            "ipv6-native": lambda r: False,
            "owner-id": lambda r: r.account_id,
            "state": lambda r: "available",
            "available-ip-address-count": lambda r: _free(call, r, used),
            "subnet-arn": lambda r: _subnet(call, r, {}, used)["subnetArn"],
        },
        "SubnetId",
        tag_map,
        absent=(
            "ipv6-cidr-block-association.ipv6-cidr-block",
            "ipv6-cidr-block-association.association-id",
            "ipv6-cidr-block-association.state",
            "outpost-arn",
            "customer-owned-ipv4-pool",
            "enable-lni-at-device-index",
            "private-dns-name-options-on-launch.hostname-type",
            "private-dns-name-options-on-launch.enable-resource-name-dns-a-record",
            "private-dns-name-options-on-launch.enable-resource-name-dns-aaaa-record",
        ),
    )
    return {"subnetSet": [_subnet(call, r, tag_map, used) for r in page], "nextToken": token}


async def _used(call: Call) -> dict[str, int]:
    from sqlalchemy import func

    from corral.store.models import Instance

    async with call.ctrl.store.read() as s:
        q = (
            select(Instance.subnet_id, func.count())
            .where(
                Instance.account_id == call.caller.account_id,
                Instance.state != "terminated",
                Instance.subnet_id.is_not(None),
            )
            .group_by(Instance.subnet_id)
        )
        return {str(k): int(v) for k, v in await s.execute(q)}


@action(
    "ModifySubnetAttribute",
    accepts=("SubnetId", "MapPublicIpOnLaunch.Value"),
    unsupported=(
        "AssignIpv6AddressOnCreation.*",
        "MapCustomerOwnedIpOnLaunch.*",
        "CustomerOwnedIpv4Pool",
        "EnableDns64.*",
        "PrivateDnsHostnameTypeOnLaunch",
        "EnableResourceNameDnsARecordOnLaunch.*",
        "EnableResourceNameDnsAAAARecordOnLaunch.*",
        "EnableLniAtDeviceIndex",
        "DisableLniAtDeviceIndex.*",
    ),
)
async def subnet_attribute_modify(call: Call) -> dict[str, Any]:
    sid = call.p.need("SubnetId")
    _check([sid], "subnet", "InvalidSubnetID")
    value = _bool_value(call, "MapPublicIpOnLaunch")
    if value is None:
        raise missing("MapPublicIpOnLaunch.Value")
    await call.ctrl.vpcs.set_map_public_ip(call.caller, sid, value, dry_run=call.dry_run)
    return {"return": True}


# -- internet gateways -----------------------------------------------------------------------


def _igw(row: InternetGateway, tag_map: Tagged) -> dict[str, Any]:
    return {
        "internetGatewayId": row.id,
        "ownerId": row.account_id,
        "attachmentSet": [{"vpcId": row.vpc_id, "state": "available"}] if row.vpc_id else [],
        "tagSet": views.tag_set(tag_map.get(row.id)),
    }


@action("CreateInternetGateway", accepts=(*TAG_SPECS, *DRY_RUN))
async def igw_create(call: Call) -> dict[str, Any]:
    wanted = tags.check(call.p.tag_specs(("internet-gateway",)).get("internet-gateway", {}))
    row = await call.ctrl.vpcs.create_gateway(call.caller, wanted, dry_run=call.dry_run)
    return {"internetGateway": _igw(row, {row.id: wanted})}


def _igw_and_vpc(call: Call) -> tuple[str, str]:
    igw, vpc = call.p.need("InternetGatewayId"), call.p.need("VpcId")
    _check([igw], "internet_gateway", "InvalidInternetGatewayID")
    _check([vpc], "vpc", "InvalidVpcID")
    return igw, vpc


@action("AttachInternetGateway", accepts=("InternetGatewayId", "VpcId", *DRY_RUN))
async def igw_attach(call: Call) -> dict[str, Any]:
    igw, vpc = _igw_and_vpc(call)
    await call.ctrl.vpcs.attach_gateway(call.caller, igw, vpc, dry_run=call.dry_run)
    return {"return": True}


@action("DetachInternetGateway", accepts=("InternetGatewayId", "VpcId", *DRY_RUN))
async def igw_detach(call: Call) -> dict[str, Any]:
    igw, vpc = _igw_and_vpc(call)
    await call.ctrl.vpcs.detach_gateway(call.caller, igw, vpc, dry_run=call.dry_run)
    return {"return": True}


@action("DeleteInternetGateway", accepts=("InternetGatewayId", *DRY_RUN))
async def igw_delete(call: Call) -> dict[str, Any]:
    igw = call.p.need("InternetGatewayId")
    _check([igw], "internet_gateway", "InvalidInternetGatewayID")
    await call.ctrl.vpcs.delete_gateway(call.caller, igw, dry_run=call.dry_run)
    return {"return": True}


@action("DescribeInternetGateways", accepts=("InternetGatewayId.N", *FILTERS, *PAGES, *DRY_RUN))
async def igw_describe(call: Call) -> dict[str, Any]:
    wanted = _wanted(call, "InternetGatewayId", "internet_gateway", "InvalidInternetGatewayID")
    _, _, igws = await call.ctrl.vpcs.list(call.caller)
    rows = _pick(igws, wanted, "InvalidInternetGatewayID.NotFound", "internet gateway ID")
    tag_map = await _tags(call, [r.id for r in rows])
    page, token = _page(
        call,
        rows,
        {
            "internet-gateway-id": lambda r: r.id,
            "attachment.vpc-id": lambda r: r.vpc_id,
            "attachment.state": lambda r: "available" if r.vpc_id else None,
            "owner-id": lambda r: r.account_id,
        },
        "InternetGatewayId",
        tag_map,
    )
    return {"internetGatewaySet": [_igw(r, tag_map) for r in page], "nextToken": token}


# -- route tables ----------------------------------------------------------------------------


def _routes(vpc: Vpc, igw: str | None) -> list[dict[str, Any]]:
    out = [
        {
            "destinationCidrBlock": vpc.cidr,
            "gatewayId": "local",
            "state": "active",
            "origin": "CreateRouteTable",
        }
    ]
    if igw:
        out.append(
            {
                "destinationCidrBlock": "0.0.0.0/0",
                "gatewayId": igw,
                "state": "active",
                "origin": "CreateRoute",
            }
        )
    return out


def _route_table(vpc: Vpc, igw: str | None) -> dict[str, Any]:
    rtb = route_table_id(vpc.id)
    return {
        "routeTableId": rtb,
        "vpcId": vpc.id,
        "ownerId": vpc.account_id,
        "routeSet": _routes(vpc, igw),
        "associationSet": [
            {
                "routeTableAssociationId": "rtbassoc-" + vpc.id.partition("-")[2],
                "routeTableId": rtb,
                "main": True,
                "associationState": {"state": "associated"},
            }
        ],
        "propagatingVgwSet": [],
        "tagSet": None,
    }


@action("DescribeRouteTables", accepts=("RouteTableId.N", *FILTERS, *PAGES, *DRY_RUN))
async def route_table_describe(call: Call) -> dict[str, Any]:
    wanted = _wanted(call, "RouteTableId", "route_table", "InvalidRouteTableID")
    vpcs, _, igws = await call.ctrl.vpcs.list(call.caller)
    gw = {g.vpc_id: g.id for g in igws if g.vpc_id}
    tables = {route_table_id(v.id): v for v in vpcs}
    gone = [w for w in wanted if w not in tables]
    if gone:
        raise not_found("InvalidRouteTableID.NotFound", "route table", gone)
    rows = [v for k, v in tables.items() if not wanted or k in wanted]

    def dests(v: Vpc) -> list[str]:
        return [r["destinationCidrBlock"] for r in _routes(v, gw.get(v.id))]

    page, token = _page(
        call,
        rows,
        {
            "route-table-id": lambda v: route_table_id(v.id),
            "vpc-id": lambda v: v.id,
            "owner-id": lambda v: v.account_id,
            "association.main": lambda v: True,
            "association.route-table-id": lambda v: route_table_id(v.id),
            "association.route-table-association-id": lambda v: (
                "rtbassoc-" + v.id.partition("-")[2]
            ),
            "route.destination-cidr-block": dests,
            "route.gateway-id": lambda v: ["local", *([gw[v.id]] if v.id in gw else [])],
            "route.state": lambda v: "active",
            "route.origin": lambda v: [
                "CreateRouteTable",
                *(["CreateRoute"] if v.id in gw else []),
            ],
        },
        "RouteTableId",
        absent=(
            "association.subnet-id",
            "association.gateway-id",
            "route.nat-gateway-id",
            "route.transit-gateway-id",
            "route.vpc-peering-connection-id",
            "route.instance-id",
            "route.destination-prefix-list-id",
            "route.destination-ipv6-cidr-block",
            "route.egress-only-internet-gateway-id",
        ),
        most=100,
    )
    return {
        "routeTableSet": [_route_table(v, gw.get(v.id)) for v in page],
        "nextToken": token,
    }


# -- network interfaces ----------------------------------------------------------------------


@action(
    "DescribeNetworkInterfaces",
    accepts=("NetworkInterfaceId.N", "IncludeManagedResources", *FILTERS, *PAGES, *DRY_RUN),
)
async def interface_describe(call: Call) -> dict[str, Any]:
    from corral.api.ec2.instances import load

    call.p.flag("IncludeManagedResources")  # Corral has no managed interfaces
    wanted = _wanted(call, "NetworkInterfaceId", "network_interface", "InvalidNetworkInterfaceID")
    rows, x = await load(call)
    st = call.api.settings
    live = [r for r in rows if r.state != "terminated" and r.subnet_id and r.private_ip]
    by_id = {interface_id(r.id): r for r in live}
    gone = [w for w in wanted if w not in by_id]
    if gone:
        raise not_found("InvalidNetworkInterfaceID.NotFound", "network interface", gone)
    if wanted:
        live = [by_id[w] for w in wanted]

    def zone(r: Any) -> str:
        return x.zones.get(r.node_id or "") or st.availability_zone

    async with call.ctrl.store.read() as s:
        eips = {
            str(i): (str(a), str(b or ""))
            for i, a, b in await s.execute(
                select(
                    ElasticAddress.instance_id, ElasticAddress.id, ElasticAddress.association_id
                ).where(
                    ElasticAddress.account_id == call.caller.account_id,
                    ElasticAddress.instance_id.is_not(None),
                )
            )
        }
    public = x.public_ips.get

    getters: dict[str, Callable[[Any], Any]] = {
        "network-interface-id": lambda r: interface_id(r.id),
        "subnet-id": lambda r: r.subnet_id,
        "vpc-id": lambda r: x.vpcs.get(r.subnet_id or ""),
        "availability-zone": zone,
        "mac-address": lambda r: r.mac,
        "owner-id": lambda r: r.account_id,
        "private-ip-address": lambda r: r.private_ip,
        "addresses.private-ip-address": lambda r: r.private_ip,
        "private-dns-name": lambda r: private_dns_name(r.name, r.account_id, st.domain),
        "status": lambda r: "in-use",
        "attachment.instance-id": lambda r: r.id,
        "attachment.instance-owner-id": lambda r: r.account_id,
        "attachment.device-index": lambda r: 0,
        "attachment.status": lambda r: "attached",
        "attachment.delete-on-termination": lambda r: True,
        "group-id": lambda r: [g for g, _ in x.groups.get(r.id, [])],
        "group-name": lambda r: [n for _, n in x.groups.get(r.id, [])],
        "association.public-ip": lambda r: public(r.id),
        "addresses.association.public-ip": lambda r: public(r.id),
        "association.ip-owner-id": lambda r: r.account_id if public(r.id) else None,
        "addresses.association.owner-id": lambda r: r.account_id if public(r.id) else None,
        "association.allocation-id": lambda r: eips.get(r.id, (None, None))[0],
        "association.association-id": lambda r: eips.get(r.id, (None, None))[1] or None,
        "addresses.primary": lambda r: True,
        "attachment.attach-time": lambda r: r.launch_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "attachment.attachment-id": lambda r: "eni-attach-" + r.id.partition("-")[2],
        "availability-zone-id": lambda r: _zone_id(call, ""),
        "operator.managed": lambda r: False,
        "requester-managed": lambda r: False,
        "source-dest-check": lambda r: r.source_dest_check,
        "interface-type": lambda r: "interface",
        "description": lambda r: "",
    }
    page, token = _page(
        call,
        live,
        getters,
        "NetworkInterfaceId",
        absent=(
            "association.public-dns-name",
            "ipv6-addresses.ipv6-address",
            "operator.principal",
            "requester-id",
        ),
    )
    out = []
    for r in page:
        item = views.interface(r, x, zone(r), st.domain)
        item["availabilityZone"] = zone(r)
        item["requesterManaged"] = False
        item["attachment"]["instanceId"] = r.id
        item["attachment"]["instanceOwnerId"] = r.account_id
        out.append(item)
    return {"networkInterfaceSet": out, "nextToken": token}
