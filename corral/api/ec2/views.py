"""Store rows as EC2 response items (the dicts ``xml`` renders)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.controller import states
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
        "monitoring": {"state": "disabled"},
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
    }


def instance_filters(x: InstanceExtras, zone: str, domain: str) -> dict[str, Any]:
    return {
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
        "monitoring-state": lambda r: "disabled",
    }
