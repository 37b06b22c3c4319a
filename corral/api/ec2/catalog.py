"""What this Corral offers: DescribeRegions, DescribeAvailabilityZones, DescribeInstanceTypes
(Corral's types, with the CPU share of fractional ones), DescribeAccountAttributes."""

from __future__ import annotations

import ipaddress
from typing import Any

from corral.api.ec2 import instances
from corral.api.ec2.common import dry_run_ok
from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES
from corral.api.ec2.registry import Call, action
from corral.controller.instance_types import CATALOG, InstanceType


@action(
    "DescribeRegions",
    accepts=(
        "RegionName.N",
        "AllRegions",
        *FILTERS,
        *DRY_RUN,
    ),
)
async def regions_describe(call: Call) -> dict[str, Any]:
    call.p.flag("AllRegions")  # one region: all of them are this one
    st = call.api.settings
    names = call.p.strings("RegionName")
    unknown = [n for n in names if n != st.region]
    if unknown:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Invalid region names: {', '.join(unknown)}; this Corral is {st.region}",
        )
    item = {
        "regionName": st.region,
        "regionEndpoint": st.api_url.split("://", 1)[-1],
        "optInStatus": "opt-in-not-required",
    }
    match = Filters(
        call.p.filters(),
        {
            "region-name": lambda r: r["regionName"],
            "endpoint": lambda r: r["regionEndpoint"],
            "opt-in-status": lambda r: r["optInStatus"],
        },
    )
    if call.dry_run:
        dry_run_ok()
    return {"regionInfo": [item] if match(item) else []}


@action(
    "DescribeAvailabilityZones",
    accepts=(
        "ZoneName.N",
        "ZoneId.N",
        "AllAvailabilityZones",
        *FILTERS,
        *DRY_RUN,
    ),
)
async def zones_describe(call: Call) -> dict[str, Any]:
    call.p.flag("AllAvailabilityZones")  # every zone is opted in
    st = call.api.settings
    zones = await _node_zones(call)
    items = [
        {
            "zoneName": name,
            "zoneState": state,
            "regionName": st.region,
            "zoneId": _zone_id(st, name),
            "zoneType": "availability-zone",
            "optInStatus": "opt-in-not-required",
            "groupName": st.region,
            "networkBorderGroup": st.region,
            "messageSet": [],
        }
        for name, state in sorted(zones.items())
    ]
    names, zone_ids = call.p.strings("ZoneName"), call.p.strings("ZoneId")
    unknown = [n for n in names if n not in zones] + [
        z for z in zone_ids if z not in {i["zoneId"] for i in items}
    ]
    if unknown:
        raise Ec2Error(
            "InvalidParameterValue",
            f"The availability zone '{', '.join(unknown)}' does not exist; this "
            f"Corral has {', '.join(sorted(zones))}",
        )
    items = [
        i
        for i in items
        if (not names or i["zoneName"] in names) and (not zone_ids or i["zoneId"] in zone_ids)
    ]
    match = Filters(
        call.p.filters(),
        {
            "zone-name": lambda z: z["zoneName"],
            "zone-id": lambda z: z["zoneId"],
            "state": lambda z: z["zoneState"],
            "region-name": lambda z: z["regionName"],
            "zone-type": lambda z: z["zoneType"],
            "group-name": lambda z: z["groupName"],
            "opt-in-status": lambda z: z["optInStatus"],
            "group-long-name": lambda z: z["groupName"],
        },
        absent=("message", "parent-zone-id", "parent-zone-name"),
    )
    if call.dry_run:
        dry_run_ok()
    return {"availabilityZoneInfo": [i for i in items if match(i)]}


def _zone_id(st: Any, name: str) -> str:
    if name == st.availability_zone:
        return instances.zone_id(st.region)
    return f"{st.region.replace('-', '')}-{name}"


async def _node_zones(call: Call) -> dict[str, str]:
    """The nodes' zones: ``available`` while one of its nodes is ready or cordoned,
    ``unavailable`` when all are unreachable. With no node yet: this Corral's own zone."""
    from sqlalchemy import select

    from corral.controller.cluster import REMOVED, UNREACHABLE
    from corral.store.models import Node

    st = call.api.settings
    async with call.api.controller.store.read() as s:
        rows = (await s.execute(select(Node.zone, Node.state).where(Node.state != REMOVED))).all()
    zones: dict[str, str] = {}
    for zone, state in rows:
        name = zone or st.availability_zone
        if state != UNREACHABLE or zones.get(name) == "available":
            zones[name] = "available"
        else:
            zones.setdefault(name, "unavailable")
    return zones or {st.availability_zone: "available"}


def type_item(t: InstanceType) -> dict[str, Any]:
    return {
        "instanceType": t.name,
        "currentGeneration": True,
        "freeTierEligible": False,
        "supportedUsageClasses": ["on-demand"],
        "supportedRootDeviceTypes": ["ebs", "instance-store"],
        "supportedVirtualizationTypes": ["hvm"],
        "bareMetal": False,
        "processorInfo": {"supportedArchitectures": ["x86_64"]},
        "vCpuInfo": {
            "defaultVCpus": t.vcpus,
            "defaultCores": t.vcpus,
            "defaultThreadsPerCore": 1,
            # Corral's fractional CPU: the host cores the vCPUs may use together
            "cpuLimitInCores": f"{t.cores:g}",
        },
        "memoryInfo": {"sizeInMiB": t.memory_mib},
        "instanceStorageSupported": False,
        "burstablePerformanceSupported": t.burstable,
        "hibernationSupported": False,
        "supportedBootModes": ["legacy-bios"],
    }


# what AWS's types describe and Corral's do not have (EBS bandwidth, local disks, ENA/EFA …)
TYPE_ABSENT = (
    "ebs-info.attachment-limit-type",
    "ebs-info.maximum-ebs-attachments",
    "ebs-info.ebs-optimized-info.baseline-bandwidth-in-mbps",
    "ebs-info.ebs-optimized-info.baseline-iops",
    "ebs-info.ebs-optimized-info.baseline-throughput-in-mbps",
    "ebs-info.ebs-optimized-info.maximum-bandwidth-in-mbps",
    "ebs-info.ebs-optimized-info.maximum-iops",
    "ebs-info.ebs-optimized-info.maximum-throughput-in-mbps",
    "ebs-info.ebs-optimized-support",
    "ebs-info.encryption-support",
    "ebs-info.nvme-support",
    "hypervisor",
    "instance-storage-info.disk.count",
    "instance-storage-info.disk.size-in-gb",
    "instance-storage-info.disk.type",
    "instance-storage-info.encryption-support",
    "instance-storage-info.nvme-support",
    "instance-storage-info.total-size-in-gb",
    "network-info.bandwidth-weightings",
    "network-info.efa-info.maximum-efa-interfaces",
    "network-info.efa-supported",
    "network-info.ena-support",
    "network-info.flexible-ena-queues-support",
    "network-info.encryption-in-transit-supported",
    "network-info.ipv4-addresses-per-interface",
    "network-info.ipv6-addresses-per-interface",
    "network-info.ipv6-supported",
    "network-info.maximum-network-cards",
    "network-info.maximum-network-interfaces",
    "network-info.network-performance",
    "nitro-enclaves-support",
    "nitro-tpm-support",
    "nitro-tpm-info.supported-versions",
    "processor-info.sustained-clock-speed-in-ghz",
    "processor-info.supported-features",
    "reboot-migration-support",
    "vcpu-info.valid-cores",
    "vcpu-info.valid-threads-per-core",
)


@action(
    "DescribeInstanceTypes",
    accepts=(
        "InstanceType.N",
        "IncludeUnsupportedInRegion",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def types_describe(call: Call) -> dict[str, Any]:
    call.p.flag("IncludeUnsupportedInRegion")  # every type runs here
    names = call.p.strings("InstanceType")
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise Ec2Error(
            "InvalidInstanceType",
            f"The following supplied instance types do not exist: [{', '.join(unknown)}]",
        )
    rows = [CATALOG[n] for n in names] if names else list(CATALOG.values())
    match = Filters(
        call.p.filters(),
        {
            "instance-type": lambda t: t.name,
            "vcpu-info.default-vcpus": lambda t: t.vcpus,
            "memory-info.size-in-mib": lambda t: t.memory_mib,
            "burstable-performance-supported": lambda t: t.burstable,
            "current-generation": lambda t: True,
            "processor-info.supported-architecture": lambda t: "x86_64",
            "supported-virtualization-type": lambda t: "hvm",
            "auto-recovery-supported": lambda t: False,
            "bare-metal": lambda t: False,
            "dedicated-hosts-supported": lambda t: False,
            "free-tier-eligible": lambda t: False,
            "hibernation-supported": lambda t: False,
            "instance-storage-supported": lambda t: False,
            "supported-boot-mode": lambda t: "legacy-bios",
            "supported-root-device-type": lambda t: ["ebs", "instance-store"],
            "supported-usage-class": lambda t: "on-demand",
            "vcpu-info.default-cores": lambda t: t.vcpus,
            "vcpu-info.default-threads-per-core": lambda t: 1,
        },
        absent=TYPE_ABSENT,
    )
    rows = [t for t in rows if match(t)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(rows, call.p, call.action, call.caller.account_id, 5, 100)
    return {"instanceTypeSet": [type_item(t) for t in page], "nextToken": token}


@action(
    "DescribeAccountAttributes",
    accepts=(
        "AttributeName.N",
        *DRY_RUN,
    ),
)
async def account_attributes(call: Call) -> dict[str, Any]:
    pool = ipaddress.ip_network(call.api.settings.public_cidr)
    pool_size = max(0, pool.num_addresses - 3)
    _acct, quota = await call.api.controller.quotas.show(call.caller.account_id)
    limit = {q.name: q.limit for q in quota}
    # the account's quotas (controller/quotas.py); -1 (unlimited) as the most there can be
    eips = str(pool_size if limit["elastic_ips"] < 0 else min(pool_size, limit["elastic_ips"]))
    default_vpc = await call.ctrl.vpcs.settled_default(call.caller.account_id)
    values = {
        "supported-platforms": ["VPC"],  # issue 12: every account has VPCs
        "default-vpc": [default_vpc or "none"],
        "max-instances": [str(2**31 - 1 if limit["instances"] < 0 else limit["instances"])],
        "vpc-max-security-groups-per-interface": ["5"],
        "max-elastic-ips": [eips],
        "vpc-max-elastic-ips": [eips],
    }
    wanted = call.p.strings("AttributeName")
    unknown = [w for w in wanted if w not in values]
    if unknown:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Value ({unknown[0]}) for parameter attributeName is invalid; known: "
            f"{', '.join(values)}",
        )
    if call.dry_run:
        dry_run_ok()
    return {
        "accountAttributeSet": [
            {"attributeName": k, "attributeValueSet": [{"attributeValue": v} for v in vs]}
            for k, vs in values.items()
            if not wanted or k in wanted
        ]
    }
