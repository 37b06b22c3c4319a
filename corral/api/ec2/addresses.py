"""Elastic addresses: Allocate/Associate/Disassociate/Release/DescribeAddresses. Recorded and
reported now; the NAT that makes them reach instances comes with the networking work."""

from __future__ import annotations

from typing import Any

from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok, not_found
from corral.api.ec2.errors import Ec2Error, missing
from corral.api.ec2.listing import Filters
from corral.api.ec2.params import DRY_RUN, FILTERS, TAG_SPECS
from corral.api.ec2.registry import Call, action
from corral.controller import tags
from corral.store.models import ElasticAddress


def _item(a: ElasticAddress, region: str, tag_map: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "publicIp": a.public_ip,
        "allocationId": a.id,
        "domain": a.domain,
        "instanceId": a.instance_id,
        "associationId": a.association_id,
        "privateIpAddress": a.private_ip,
        "networkBorderGroup": region,
        "publicIpv4Pool": "corral",
        "tagSet": views.tag_set(tag_map.get(a.id)),
    }


@action(
    "AllocateAddress",
    accepts=(
        "Domain",
        *TAG_SPECS,
        *DRY_RUN,
    ),
    unsupported=(
        "Address",
        "PublicIpv4Pool",
        "NetworkBorderGroup",
        "CustomerOwnedIpv4Pool",
        "IpamPoolId",
    ),
)
async def address_allocate(call: Call) -> dict[str, Any]:
    domain = call.p.get("Domain") or "vpc"
    if domain not in ("vpc", "standard"):
        raise Ec2Error("InvalidParameterValue", f"Domain {domain!r} must be vpc or standard")
    wanted = tags.check(call.p.tag_specs(("elastic-ip",)).get("elastic-ip", {}))
    row = await call.ctrl.elastic_ips.allocate(call.caller, call.dry_run, wanted, domain)
    return {
        "publicIp": row.public_ip,
        "allocationId": row.id,
        "domain": row.domain,
        "publicIpv4Pool": "corral",
        "networkBorderGroup": call.api.settings.region,
    }


@action(
    "AssociateAddress",
    accepts=(
        "AllocationId",
        "InstanceId",
        "PublicIp",
        "AllowReassociation",
        *DRY_RUN,
    ),
    unsupported=(
        "NetworkInterfaceId",
        "PrivateIpAddress",
    ),
)
async def address_associate(call: Call) -> dict[str, Any]:
    p = call.p
    iid = p.get("InstanceId")
    if not iid:
        raise missing("InstanceId")
    alloc, ip = p.get("AllocationId"), p.get("PublicIp")
    if not alloc and not ip:
        raise Ec2Error("MissingParameter", "The request must contain AllocationId or PublicIp")
    row = await call.ctrl.elastic_ips.associate(
        call.caller, iid, alloc, ip, p.flag("AllowReassociation", False), call.dry_run
    )
    return {"return": True, "associationId": row.association_id}


@action(
    "DisassociateAddress",
    accepts=(
        "AssociationId",
        "PublicIp",
        *DRY_RUN,
    ),
)
async def address_disassociate(call: Call) -> dict[str, Any]:
    assoc, ip = call.p.get("AssociationId"), call.p.get("PublicIp")
    if not assoc and not ip:
        raise Ec2Error("MissingParameter", "The request must contain AssociationId or PublicIp")
    await call.ctrl.elastic_ips.disassociate(call.caller, assoc, ip, call.dry_run)
    return {"return": True}


@action(
    "ReleaseAddress",
    accepts=(
        "AllocationId",
        "PublicIp",
        *DRY_RUN,
    ),
    unsupported=("NetworkBorderGroup",),
)
async def address_release(call: Call) -> dict[str, Any]:
    alloc, ip = call.p.get("AllocationId"), call.p.get("PublicIp")
    if not alloc and not ip:
        raise Ec2Error("MissingParameter", "The request must contain AllocationId or PublicIp")
    await call.ctrl.elastic_ips.release(call.caller, alloc, ip, call.dry_run)
    return {"return": True}


@action(
    "DescribeAddresses",
    accepts=(
        "PublicIp.N",
        "AllocationId.N",
        *FILTERS,
        *DRY_RUN,
    ),
)
async def address_describe(call: Call) -> dict[str, Any]:
    p = call.p
    rows = await call.ctrl.elastic_ips.list(call.caller)
    allocs, ips = p.strings("AllocationId"), p.strings("PublicIp")
    if allocs:
        have = {a.id for a in rows}
        gone = [a for a in allocs if a not in have]
        if gone:
            raise not_found("InvalidAllocationID.NotFound", "allocation ID", gone)
        rows = [a for a in rows if a.id in allocs]
    if ips:
        have = {a.public_ip for a in rows}
        gone = [a for a in ips if a not in have]
        if gone:
            raise Ec2Error("InvalidAddress.NotFound", f"Address '{', '.join(gone)}' not found.")
        rows = [a for a in rows if a.public_ip in ips]
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, call.caller.account_id, [a.id for a in rows])
    region = call.api.settings.region
    match = Filters(
        p.filters(),
        {
            "allocation-id": lambda a: a.id,
            "association-id": lambda a: a.association_id,
            "domain": lambda a: a.domain,
            "instance-id": lambda a: a.instance_id,
            "public-ip": lambda a: a.public_ip,
            "private-ip-address": lambda a: a.private_ip,
            "network-border-group": lambda a: region,
            "public-ipv4-pool": lambda a: "corral",
            "network-interface-owner-id": lambda a: a.account_id if a.instance_id else None,
        },
        lambda a: tag_map.get(a.id, {}),
        ("network-interface-id",),
    )
    if call.dry_run:
        dry_run_ok()
    return {"addressesSet": [_item(a, region, tag_map) for a in rows if match(a)]}
