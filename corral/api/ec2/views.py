"""Store rows as EC2 response items (the dicts ``xml`` renders)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.controller import states
from corral.controller.vpcs import interface_id
from corral.naming import private_dns_name
from corral.store import models as db

ROOT_DEVICE = "/dev/sda1"


def state(name: str) -> dict[str, Any]:
    return {"code": states.code(name), "name": name}


def tag_set(tags: dict[str, str] | None) -> list[dict[str, str]] | None:
    if not tags:
        return None
    return [{"key": k, "value": v} for k, v in tags.items()]


def state_reason(reason: str) -> dict[str, str] | None:
    if not reason:
        return None
    if reason.startswith("User initiated"):
        return {
            "code": "Client.UserInitiatedShutdown",
            "message": "Client.UserInitiatedShutdown: User initiated shutdown",
        }
    code, sep, _ = reason.partition(":")
    if sep and "." in code and " " not in code:
        return {"code": code, "message": reason}
    return {"code": "Server.InternalError", "message": reason}


@dataclass
class InstanceExtras:
    """What an instance item needs besides its row, loaded once for a whole listing."""

    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    public_ips: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, list[db.Volume]] = field(default_factory=dict)
    root_types: dict[str, str] = field(default_factory=dict)  # image id -> root device type
    zones: dict[str, str] = field(default_factory=dict)  # node id -> availability zone
    placement_groups: dict[str, str] = field(default_factory=dict)  # pg id -> name
    launch_index: dict[str, int] = field(default_factory=dict)  # its place in its reservation
    vpcs: dict[str, str] = field(default_factory=dict)  # subnet id -> its VPC's id


def instance(
    row: db.Instance, x: InstanceExtras, zone: str, domain: str, index: int = 0
) -> dict[str, Any]:
    groups = x.groups.get(row.id, [])
    live = row.state != "terminated"
    vols = x.volumes.get(row.id, [])
    reason = (
        row.state_reason
        if row.state in ("stopped", "stopping", "terminated", "shutting-down")
        else ""
    )
    return {
        "instanceId": row.id,
        "imageId": row.image_id,
        "instanceState": state(row.state),
        "privateDnsName": private_dns_name(row.name, row.account_id, domain)
        if live and row.private_ip
        else "",
        "dnsName": "",
        "reason": reason if reason.startswith("User initiated") else "",
        "keyName": row.key_name,
        "amiLaunchIndex": index,
        "productCodes": [],
        "instanceType": row.instance_type or f"custom-{row.cpus}vcpu-{row.memory >> 20}mib",
        "launchTime": row.launch_time,
        "placement": {
            "availabilityZone": x.zones.get(row.node_id or "", zone),
            "groupName": x.placement_groups.get(row.placement_group_id or "", ""),
            "tenancy": "default",
        },
        "monitoring": {"state": row.monitoring},
        "privateIpAddress": row.private_ip,
        "ipAddress": x.public_ips.get(row.id),
        "groupSet": [{"groupId": g, "groupName": n} for g, n in groups],
        "stateReason": state_reason(reason),
        "architecture": "x86_64",
        "rootDeviceType": x.root_types.get(row.image_id, "instance-store"),
        "rootDeviceName": ROOT_DEVICE,
        "blockDeviceMapping": [
            {
                "deviceName": v.device,
                "ebs": {
                    "volumeId": v.id,
                    "status": v.attach_state or "attached",
                    "attachTime": v.attach_time,
                    "deleteOnTermination": v.delete_on_termination,
                },
            }
            for v in vols
        ],
        "virtualizationType": "hvm",
        "clientToken": row.client_token or "",
        "tagSet": tag_set(x.tags.get(row.id)),
        "cpuOptions": {"coreCount": row.cpus, "threadsPerCore": 1},
        "ebsOptimized": False,
        "platformDetails": "Linux/UNIX",
        "sourceDestCheck": row.source_dest_check,
        "vpcId": x.vpcs.get(row.subnet_id or "") if live else None,
        "subnetId": row.subnet_id if live else None,
        "networkInterfaceSet": [interface(row, x, zone, domain)]
        if live and row.subnet_id and row.private_ip
        else [],
        "metadataOptions": {
            "state": "applied",
            "httpTokens": row.metadata_tokens,
            "httpPutResponseHopLimit": row.metadata_hop_limit,
            "httpEndpoint": row.metadata_endpoint,
            "httpProtocolIpv6": "disabled",
            "instanceMetadataTags": "disabled",
        },
    }


def interface(row: Any, x: InstanceExtras, zone: str, domain: str) -> dict[str, Any]:
    """An instance's one network interface (device 0), as DescribeInstances' item shows it."""
    public = x.public_ips.get(row.id)
    assoc = {"publicIp": public, "ipOwnerId": row.account_id} if public else None
    dns = private_dns_name(row.name, row.account_id, domain)
    return {
        "networkInterfaceId": interface_id(row.id),
        "subnetId": row.subnet_id,
        "vpcId": x.vpcs.get(row.subnet_id or ""),
        "description": "",
        "ownerId": row.account_id,
        "status": "in-use",
        "macAddress": row.mac,
        "privateIpAddress": row.private_ip,
        "privateDnsName": dns,
        "sourceDestCheck": row.source_dest_check,
        "groupSet": [{"groupId": g, "groupName": n} for g, n in x.groups.get(row.id, [])],
        "attachment": {
            "attachmentId": "eni-attach-" + row.id.partition("-")[2],
            "deviceIndex": 0,
            "networkCardIndex": 0,
            "status": "attached",
            "attachTime": row.launch_time,
            "deleteOnTermination": True,
        },
        "association": assoc,
        "privateIpAddressesSet": [
            {
                "privateIpAddress": row.private_ip,
                "privateDnsName": dns,
                "primary": True,
                "association": assoc,
            }
        ],
        "interfaceType": "interface",
    }


def _time(when: Any) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z") if when is not None else None


def instance_filters(x: InstanceExtras, zone: str, domain: str, zone_id: str) -> dict[str, Any]:
    def groups(r: Any) -> list[str]:
        return [g for g, _ in x.groups.get(r.id, [])]

    def group_names(r: Any) -> list[str]:
        return [n for _, n in x.groups.get(r.id, [])]

    def vols(r: Any) -> list[db.Volume]:
        return x.volumes.get(r.id, [])

    def dns(r: Any) -> str | None:
        return f"{r.name}.{domain}" if r.private_ip else None

    def live(value: Any) -> Any:
        """A value of the instance's network interface, which exists while it is not
        terminated."""
        return lambda r: value(r) if r.state != "terminated" else None

    nic = {
        "network-interface.addresses.private-ip-address": live(lambda r: r.private_ip),
        "network-interface.addresses.primary": live(lambda r: True),
        "network-interface.addresses.private-dns-name": live(dns),
        "network-interface.addresses.association.public-ip": live(lambda r: x.public_ips.get(r.id)),
        "network-interface.addresses.association.ip-owner-id": live(
            lambda r: r.account_id if x.public_ips.get(r.id) else None
        ),
        "network-interface.association.public-ip": live(lambda r: x.public_ips.get(r.id)),
        "network-interface.association.ip-owner-id": live(
            lambda r: r.account_id if x.public_ips.get(r.id) else None
        ),
        "network-interface.attachment.instance-id": live(lambda r: r.id),
        "network-interface.network-interface-id": live(lambda r: interface_id(r.id)),
        "network-interface.subnet-id": live(lambda r: r.subnet_id),
        "network-interface.vpc-id": live(lambda r: x.vpcs.get(r.subnet_id or "")),
        "subnet-id": live(lambda r: r.subnet_id),
        "vpc-id": live(lambda r: x.vpcs.get(r.subnet_id or "")),
        "network-interface.attachment.instance-owner-id": live(lambda r: r.account_id),
        "network-interface.attachment.device-index": live(lambda r: 0),
        "network-interface.attachment.network-card-index": live(lambda r: 0),
        "network-interface.attachment.status": live(lambda r: "attached"),
        "network-interface.attachment.attach-time": live(lambda r: _time(r.launch_time)),
        "network-interface.attachment.delete-on-termination": live(lambda r: True),
        "network-interface.availability-zone": live(lambda r: zone),
        "network-interface.group-id": live(groups),
        "network-interface.group-name": live(group_names),
        "network-interface.mac-address": live(lambda r: r.mac),
        "network-interface.owner-id": live(lambda r: r.account_id),
        "network-interface.private-dns-name": live(dns),
        "network-interface.private-ip-address": live(lambda r: r.private_ip),
        "network-interface.requester-managed": live(lambda r: False),
        "network-interface.status": live(lambda r: "in-use"),
        "network-interface.source-dest-check": live(lambda r: True),
        "network-interface.deny-all-igw-traffic": live(lambda r: False),
        "network-interface.ipv6-native": live(lambda r: False),
        "network-interface.operator.managed": live(lambda r: False),
    }
    return nic | {
        "instance-id": lambda r: r.id,
        "instance-state-name": lambda r: r.state,
        "instance-state-code": lambda r: states.code(r.state),
        "image-id": lambda r: r.image_id,
        "instance-type": lambda r: r.instance_type,
        "key-name": lambda r: r.key_name,
        "private-ip-address": lambda r: r.private_ip,
        "ip-address": lambda r: x.public_ips.get(r.id),
        "private-dns-name": lambda r: (
            private_dns_name(r.name, r.account_id, domain) if r.private_ip else None
        ),
        "dns-name": lambda r: None,
        "reservation-id": lambda r: r.reservation_id,
        "owner-id": lambda r: r.account_id,
        "availability-zone": lambda r: x.zones.get(r.node_id or "", zone),
        "placement-availability-zone": lambda r: x.zones.get(r.node_id or "", zone),
        "placement-group-name": lambda r: x.placement_groups.get(r.placement_group_id or ""),
        "launch-time": lambda r: r.launch_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "group-id": lambda r: [g for g, _ in x.groups.get(r.id, [])],
        "group-name": lambda r: [n for _, n in x.groups.get(r.id, [])],
        "instance.group-id": lambda r: [g for g, _ in x.groups.get(r.id, [])],
        "instance.group-name": lambda r: [n for _, n in x.groups.get(r.id, [])],
        "architecture": lambda r: "x86_64",
        "root-device-type": lambda r: x.root_types.get(r.image_id, "instance-store"),
        "root-device-name": lambda r: ROOT_DEVICE,
        "virtualization-type": lambda r: "hvm",
        "client-token": lambda r: r.client_token,
        "block-device-mapping.volume-id": lambda r: [v.id for v in x.volumes.get(r.id, [])],
        "block-device-mapping.device-name": lambda r: [v.device for v in x.volumes.get(r.id, [])],
        "state-reason-code": lambda r: (state_reason(r.state_reason) or {}).get("code"),
        "tenancy": lambda r: "default",
        "monitoring-state": lambda r: r.monitoring,
        "availability-zone-id": lambda r: zone_id,
        "block-device-mapping.attach-time": lambda r: [_time(v.attach_time) for v in vols(r)],
        "block-device-mapping.delete-on-termination": lambda r: [
            v.delete_on_termination for v in vols(r)
        ],
        "block-device-mapping.status": lambda r: [v.attach_state or "attached" for v in vols(r)],
        "boot-mode": lambda r: "legacy-bios",
        "current-instance-boot-mode": lambda r: "legacy-bios",
        "capacity-reservation-specification.capacity-reservation-preference": lambda r: "open",
        "ebs-optimized": lambda r: False,
        "ena-support": lambda r: False,
        "enclave-options.enabled": lambda r: False,
        "hibernation-options.configured": lambda r: False,
        "launch-index": lambda r: x.launch_index.get(r.id, 0),
        "maintenance-options.auto-recovery": lambda r: "default",
        "metadata-options.http-endpoint": lambda r: r.metadata_endpoint,
        "metadata-options.http-protocol-ipv4": lambda r: "enabled",
        "metadata-options.http-protocol-ipv6": lambda r: "disabled",
        "metadata-options.http-put-response-hop-limit": lambda r: r.metadata_hop_limit,
        "metadata-options.http-tokens": lambda r: r.metadata_tokens,
        "metadata-options.instance-metadata-tags": lambda r: "disabled",
        "metadata-options.state": lambda r: "applied",
        "network-performance-options.bandwidth-weighting": lambda r: "default",
        "operator.managed": lambda r: False,
        "platform-details": lambda r: "Linux/UNIX",
        "reason": lambda r: r.state_reason if r.state_reason.startswith("User initiated") else "",
        "source-dest-check": lambda r: r.source_dest_check,
        "state-reason-message": lambda r: (state_reason(r.state_reason) or {}).get("message"),
        "usage-operation": lambda r: "RunInstances",
        "usage-operation-update-time": lambda r: _time(r.launch_time),
    }


# filters AWS documents for DescribeInstances on what Corral's instances never have
INSTANCE_ABSENT = (
    "affinity",
    "capacity-reservation-id",
    "capacity-reservation-specification.capacity-reservation-target.capacity-reservation-id",
    "capacity-reservation-specification.capacity-reservation-target."
    "capacity-reservation-resource-group-arn",
    "host-id",
    "hypervisor",
    "iam-instance-profile.arn",
    "iam-instance-profile.id",
    "instance-lifecycle",
    "ipv6-address",
    "kernel-id",
    "ramdisk-id",
    "network-interface.addresses.association.allocation-id",
    "network-interface.addresses.association.association-id",
    "network-interface.addresses.association.carrier-ip",
    "network-interface.addresses.association.customer-owned-ip",
    "network-interface.addresses.association.public-dns-name",
    "network-interface.association.allocation-id",
    "network-interface.association.association-id",
    "network-interface.association.carrier-ip",
    "network-interface.association.customer-owned-ip",
    "network-interface.association.public-dns-name",
    "network-interface.attachment.attachment-id",
    "network-interface.description",
    "network-interface.ipv4-prefixes.ipv4-prefix",
    "network-interface.ipv6-address",
    "network-interface.ipv6-addresses.ipv6-address",
    "network-interface.ipv6-addresses.is-primary-ipv6",
    "network-interface.ipv6-prefixes.ipv6-prefix",
    "network-interface.operator.principal",
    "network-interface.outpost-arn",
    "network-interface.public-dns-name",
    "network-interface.requester-id",
    "network-interface.tag-key",
    "network-interface.tag-value",
    "operator.principal",
    "outpost-arn",
    "placement-group-name",
    "placement-partition-number",
    "platform",
    "private-dns-name-options.enable-resource-name-dns-a-record",
    "private-dns-name-options.enable-resource-name-dns-aaaa-record",
    "private-dns-name-options.hostname-type",
    "product-code",
    "product-code.type",
    "requester-id",
    "spot-instance-request-id",
    "tpm-support",
)
