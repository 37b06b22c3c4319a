"""Volumes and snapshots: Create/Delete/Describe/Attach/DetachVolume(s) and
Create/Delete/DescribeSnapshot(s), on the controller's volumes and snapshots (the native API's
too): qcow2 files on the node, hot-plugged into running instances over QMP, snapshots copied
while the guest writes."""

from __future__ import annotations

from typing import Any

from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok, not_found
from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.instances import check_ids, zone_id
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES, TAG_SPECS
from corral.api.ec2.registry import Call, action
from corral.controller import tags, volume_io
from corral.controller.volumes import io_limits
from corral.store.models import Snapshot, Volume, utcnow


def attachment(v: Volume, status: str | None = None) -> dict[str, Any]:
    return {
        "volumeId": v.id,
        "instanceId": v.instance_id,
        "device": v.device,
        "status": status or v.attach_state,
        "attachTime": v.attach_time,
        "deleteOnTermination": v.delete_on_termination,
    }


def volume_item(v: Volume, tag_map: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "volumeId": v.id,
        "size": v.size,
        "snapshotId": v.snapshot_id or "",
        "availabilityZone": v.availability_zone,
        "status": v.state,
        "createTime": v.created_at,
        "attachmentSet": [attachment(v)] if v.instance_id else [],
        "volumeType": v.volume_type,
        **_io_fields(v),
        "encrypted": False,
        "multiAttachEnabled": False,
        "tagSet": views.tag_set(tag_map.get(v.id)),
    }


def _io_fields(v: Volume) -> dict[str, Any]:
    """Iops and Throughput as DescribeVolumes shows them: what the volume's type gives (gp2's
    from its size), for the types that have them."""
    io = io_limits(v)
    out: dict[str, Any] = {}
    if v.volume_type in ("gp2", "gp3", "io1", "io2"):
        out["iops"] = io.iops
    if v.volume_type == "gp3":
        out["throughput"] = io.bps >> 20
    return out


def snapshot_item(s: Snapshot, tag_map: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "snapshotId": s.id,
        "volumeId": s.volume_id,
        "status": s.state,
        "startTime": s.created_at,
        "progress": f"{s.progress}%",
        "ownerId": s.account_id,
        "volumeSize": s.volume_size,
        "description": s.description,
        "encrypted": False,
        "storageTier": "standard",
        "tagSet": views.tag_set(tag_map.get(s.id)),
        "stateMessage": s.error or None,
    }


@action(
    "CreateVolume",
    accepts=(
        "AvailabilityZone",
        "Size",
        "SnapshotId",
        "VolumeType",
        "Iops",
        "Throughput",
        "Encrypted",
        "ClientToken",
        *TAG_SPECS,
        *DRY_RUN,
    ),
    unsupported=(
        "AvailabilityZoneId",
        "KmsKeyId",
        "OutpostArn",
        "MultiAttachEnabled",
        "VolumeInitializationRate",
        "Operator.*",
    ),
)
async def volume_create(call: Call) -> dict[str, Any]:
    p = call.p
    zone = p.need("AvailabilityZone")
    if p.flag("Encrypted"):
        raise Ec2Error(
            "InvalidParameterValue", "Corral volumes are not encrypted; leave Encrypted out"
        )
    wanted = tags.check(p.tag_specs(("volume",)).get("volume", {}))
    row, _ = await call.ctrl.volumes.create(
        call.caller,
        p.integer("Size", None),
        p.get("SnapshotId"),
        zone,
        p.get("VolumeType", "standard") or "standard",
        wanted,
        call.dry_run,
        client_token=_token(p.get("ClientToken")),
        iops=p.integer("Iops", None),
        throughput=p.integer("Throughput", None),
    )
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, call.caller.account_id, [row.id])
    return volume_item(row, tag_map)


def _token(token: str | None) -> str | None:
    if token is not None and (len(token) > 64 or not token.isascii()):
        raise Ec2Error(
            "InvalidParameterValue", "Value for parameter ClientToken is invalid: at most 64 ASCII"
        )
    return token


@action(
    "DeleteVolume",
    accepts=(
        "VolumeId",
        *DRY_RUN,
    ),
)
async def volume_delete(call: Call) -> dict[str, Any]:
    await call.ctrl.volumes.delete(call.caller, call.p.need("VolumeId"), call.dry_run)
    return {"return": True}


@action(
    "AttachVolume",
    accepts=(
        "VolumeId",
        "InstanceId",
        "Device",
        *DRY_RUN,
    ),
    unsupported=("EbsCardIndex",),
)
async def volume_attach(call: Call) -> dict[str, Any]:
    p = call.p
    row, _ = await call.ctrl.volumes.attach(
        call.caller, p.need("VolumeId"), p.need("InstanceId"), p.need("Device"), call.dry_run
    )
    return attachment(row, "attaching")


@action(
    "DetachVolume",
    accepts=(
        "VolumeId",
        "InstanceId",
        "Device",
        "Force",
        *DRY_RUN,
    ),
)
async def volume_detach(call: Call) -> dict[str, Any]:
    p = call.p
    row, _ = await call.ctrl.volumes.detach(
        call.caller,
        p.need("VolumeId"),
        p.get("InstanceId"),
        p.flag("Force"),
        call.dry_run,
        device=p.get("Device"),
    )
    return attachment(row, "detaching")


@action(
    "DescribeVolumes",
    accepts=(
        "VolumeId.N",
        "IncludeManagedResources",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def volume_describe(call: Call) -> dict[str, Any]:
    p = call.p
    p.flag("IncludeManagedResources")  # Corral has no managed volumes
    wanted = p.strings("VolumeId")
    check_ids(wanted, "volume", "VolumeId")
    rows = await call.ctrl.volumes.list(call.caller)
    if wanted:
        have = {v.id for v in rows}
        gone = [v for v in wanted if v not in have]
        if gone:
            raise not_found("InvalidVolume.NotFound", "volume", gone)
        rows = [v for v in rows if v.id in wanted]
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, call.caller.account_id, [v.id for v in rows])
    match = Filters(
        p.filters(),
        {
            "volume-id": lambda v: v.id,
            "status": lambda v: v.state,
            "size": lambda v: v.size,
            "availability-zone": lambda v: v.availability_zone,
            "snapshot-id": lambda v: v.snapshot_id,
            "volume-type": lambda v: v.volume_type,
            "attachment.instance-id": lambda v: v.instance_id,
            "attachment.device": lambda v: v.device,
            "attachment.status": lambda v: v.attach_state,
            "attachment.delete-on-termination": lambda v: (
                v.delete_on_termination if v.instance_id else None
            ),
            "create-time": lambda v: views_time(v.created_at),
            "encrypted": lambda v: False,
            "multi-attach-enabled": lambda v: False,
            "attachment.attach-time": lambda v: (
                views_time(v.attach_time) if v.instance_id else None
            ),
            "availability-zone-id": lambda v: zone_id(call.api.settings.region),
            "fast-restored": lambda v: False,
            "operator.managed": lambda v: False,
        },
        lambda v: tag_map.get(v.id, {}),
        ("operator.principal",),
    )
    rows = [v for v in rows if match(v)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(
        rows, p, call.action, call.caller.account_id, 5, 500, "VolumeId", clamp=True
    )
    return {"volumeSet": [volume_item(v, tag_map) for v in page], "nextToken": token}


def views_time(when: Any) -> str:
    from corral.api.ec2.xml import timestamp

    return timestamp(when) or ""


@action(
    "CreateSnapshot",
    accepts=(
        "VolumeId",
        "Description",
        *TAG_SPECS,
        *DRY_RUN,
    ),
    unsupported=(
        "OutpostArn",
        "Location",
    ),
)
async def snapshot_create(call: Call) -> dict[str, Any]:
    p = call.p
    wanted = tags.check(p.tag_specs(("snapshot",)).get("snapshot", {}))
    row, _ = await call.ctrl.snapshots.create(
        call.caller, p.need("VolumeId"), p.get("Description", "") or "", wanted, call.dry_run
    )
    return snapshot_item(row, {row.id: wanted})


@action(
    "DeleteSnapshot",
    accepts=(
        "SnapshotId",
        *DRY_RUN,
    ),
)
async def snapshot_delete(call: Call) -> dict[str, Any]:
    await call.ctrl.snapshots.delete(call.caller, call.p.need("SnapshotId"), call.dry_run)
    return {"return": True}


@action(
    "DescribeSnapshots",
    accepts=(
        "SnapshotId.N",
        "Owner.N",
        "RestorableBy.N",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def snapshot_describe(call: Call) -> dict[str, Any]:
    p = call.p
    wanted = p.strings("SnapshotId")
    check_ids(wanted, "snapshot", "SnapshotId")
    owners = p.strings("Owner")
    me = call.caller.account_id
    rows = await call.ctrl.snapshots.list(call.caller)
    if owners and not any(o in ("self", me) for o in owners):
        rows = []  # snapshots are never shared between accounts here
    restorable = p.strings("RestorableBy")
    if restorable and not any(r in ("self", me, "all") for r in restorable):
        rows = []
    if wanted:
        have = {v.id for v in rows}
        gone = [v for v in wanted if v not in have]
        if gone:
            raise not_found("InvalidSnapshot.NotFound", "snapshot", gone)
        rows = [v for v in rows if v.id in wanted]
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, me, [v.id for v in rows])
    match = Filters(
        p.filters(),
        {
            "snapshot-id": lambda v: v.id,
            "volume-id": lambda v: v.volume_id,
            "status": lambda v: v.state,
            "owner-id": lambda v: v.account_id,
            "description": lambda v: v.description,
            "progress": lambda v: f"{v.progress}%",
            "start-time": lambda v: views_time(v.created_at),
            "volume-size": lambda v: v.volume_size,
            "encrypted": lambda v: False,
            "storage-tier": lambda v: "standard",
        },
        lambda v: tag_map.get(v.id, {}),
        ("owner-alias", "transfer-type"),
    )
    rows = [v for v in rows if match(v)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(rows, p, call.action, me, 5, 1000, "SnapshotId", clamp=True)
    return {"snapshotSet": [snapshot_item(v, tag_map) for v in page], "nextToken": token}


@action(
    "ModifyVolume",
    accepts=("VolumeId", "VolumeType", "Iops", "Throughput", "Size", *DRY_RUN),
    unsupported=("MultiAttachEnabled",),
)
async def volume_modify(call: Call) -> dict[str, Any]:
    """A volume's type, Iops and Throughput, at once (its disk is throttled anew while it is
    attached to a running instance); resizing is refused."""
    p = call.p
    vid = p.need("VolumeId")
    check_ids([vid], "volume", "VolumeId")
    started = utcnow()
    row, before = await volume_io.modify(
        call.ctrl,
        call.caller,
        vid,
        p.get("VolumeType"),
        p.integer("Iops", None),
        p.integer("Throughput", None),
        p.integer("Size", None),
        call.dry_run,
    )
    now = _io_fields(row)
    return {
        "volumeModification": {
            "volumeId": row.id,
            "modificationState": "completed",
            "targetSize": row.size,
            "targetIops": now.get("iops"),
            "targetVolumeType": row.volume_type,
            "targetThroughput": now.get("throughput"),
            "targetMultiAttachEnabled": False,
            "originalSize": before["size"],
            "originalIops": before["iops"] or None,
            "originalVolumeType": before["volume_type"],
            "originalThroughput": before["throughput"],
            "originalMultiAttachEnabled": False,
            "progress": 100,
            "startTime": started,
            "endTime": utcnow(),
        }
    }
