"""Volumes and snapshots: qcow2 files on the node, created and deleted by operations. A volume
attached to a stopped instance is its extra disk at the next start; hot-plugging into a
running VM belongs to the images/volumes work, so until then an attachment to a running
instance takes effect at its next start (recorded now, reported as attached)."""

from __future__ import annotations

import builtins
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Invalid, NotFound, WrongState
from corral.node.spec import VolumeAttachment
from corral.store.models import Image, Instance, Operation, Snapshot, Volume, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller

GIB = 1 << 30
MAX_GIB = 16384
VOLUME_TYPES = ("standard", "gp2", "gp3", "io1", "io2", "sc1", "st1")
DEVICE = re.compile(r"^/dev/(sd[b-z]|xvd[b-z]|vd[b-z])$")


class Volumes:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("volume-create", self._create)
        ctrl.ops.register("volume-delete", self._delete)
        ctrl.ops.register("snapshot-create", self._snapshot)
        ctrl.ops.register("snapshot-delete", self._snapshot_delete)

    # -- lookups ---------------------------------------------------------------------------
    async def resolve(self, s: AsyncSession, caller: Caller, vid: str) -> Volume:
        if not ids.is_id("volume", vid):
            raise Invalid(f"volume id {vid!r} is malformed (vol- and 17 hex digits)",
                          field="VolumeId", ec2_code="InvalidVolumeID.Malformed")
        row = await s.get(Volume, vid)
        if row is None or row.account_id != caller.account_id:
            raise NotFound(f"the volume '{vid}' does not exist", field="VolumeId",
                           resource="volume")
        return row

    async def resolve_snapshot(self, s: AsyncSession, caller: Caller, sid: str) -> Snapshot:
        if not ids.is_id("snapshot", sid):
            raise Invalid(f"snapshot id {sid!r} is malformed (snap- and 17 hex digits)",
                          field="SnapshotId", ec2_code="InvalidSnapshotID.Malformed")
        row = await s.get(Snapshot, sid)
        if row is None or row.account_id != caller.account_id:
            raise NotFound(f"the snapshot '{sid}' does not exist", field="SnapshotId",
                           resource="snapshot")
        return row

    async def list(self, caller: Caller) -> builtins.list[Volume]:
        async with self.ctrl.store.read() as s:
            return list(await s.scalars(select(Volume).where(
                Volume.account_id == caller.account_id).order_by(Volume.created_at)))

    async def list_snapshots(self, caller: Caller) -> builtins.list[Snapshot]:
        async with self.ctrl.store.read() as s:
            return list(await s.scalars(select(Snapshot).where(
                Snapshot.account_id == caller.account_id).order_by(Snapshot.created_at)))

    async def attachments(self, s: AsyncSession, iid: str) -> builtins.list[VolumeAttachment]:
        rows = await s.scalars(select(Volume).where(Volume.instance_id == iid,
                                                    Volume.attach_state == "attached")
                               .order_by(Volume.attach_time))
        return [VolumeAttachment(id=v.id, device=v.device or "") for v in rows]

    # -- volumes ---------------------------------------------------------------------------
    async def create(self, caller: Caller, size: int | None, snapshot_id: str | None,
                     zone: str, volume_type: str = "standard", tags: dict[str, str] | None = None,
                     dry_run: bool = False) -> tuple[Volume, Operation | None]:
        if zone != self.ctrl.settings.availability_zone:
            raise Invalid(f"availability zone {zone!r} does not exist; this Corral has "
                          f"{self.ctrl.settings.availability_zone}", field="AvailabilityZone")
        if volume_type not in VOLUME_TYPES:
            raise Invalid(f"VolumeType {volume_type!r} must be one of {', '.join(VOLUME_TYPES)}",
                          field="VolumeType")
        if size is None and snapshot_id is None:
            raise Invalid("give Size (GiB) or SnapshotId", field="Size",
                          ec2_code="MissingParameter")
        if size is not None and not 1 <= size <= MAX_GIB:
            raise Invalid(f"Size {size} must be 1-{MAX_GIB} GiB", field="Size")
        async with self.ctrl.store.write() as s:
            snap = None
            if snapshot_id is not None:
                snap = await self.resolve_snapshot(s, caller, snapshot_id)
                if snap.state != "completed":
                    raise WrongState(f"snapshot {snap.id} is {snap.state}", resource="snapshot",
                                     ec2_code="IncorrectState")
                if size is None:
                    size = snap.volume_size
                if size < snap.volume_size:
                    raise Invalid(f"Size {size} GiB is smaller than snapshot {snap.id} "
                                  f"({snap.volume_size} GiB)", field="Size")
            assert size is not None
            node_id = next(iter(self.ctrl.nodes), None)
            row = Volume(id=ids.new_id("volume"), account_id=caller.account_id, node_id=node_id,
                         size=size, state="creating", volume_type=volume_type,
                         availability_zone=zone, snapshot_id=snapshot_id, created_at=utcnow())
            s.add(row)
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "volume", tags)
            if dry_run:
                raise DryRunPassed("CreateVolume would have succeeded")
            op = self.ctrl.ops.new("volume-create", account_id=caller.account_id,
                                   target_kind="volume", target_id=row.id,
                                   requested_by=caller.access_key_id,
                                   params={"image_id": snap.image_id if snap else None})
            s.add(op)
        self.ctrl.ops.start(op)
        return row, op

    async def _create(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Volume, ctx.target_id)
            digest = None
            if ctx.params.get("image_id"):
                image = await s.get(Image, ctx.params["image_id"])
                digest = image.digest if image is not None else None
        if row is None or row.state != "creating":
            return {}
        snap = None if digest else row.snapshot_id
        try:
            await self.ctrl.node(row.node_id).volume_create(row.id, row.size * GIB, snap, digest)
        except Exception as err:
            await self._set(row.id, state="error", error=str(err))
            raise
        await self._set(row.id, state="available")
        return {"volume_id": row.id}

    async def _set(self, vid: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Volume, vid)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    async def delete(self, caller: Caller, vid: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, vid)
            if row.instance_id is not None or row.state not in ("available", "error"):
                raise WrongState(f"volume {vid} is {row.state}"
                                 + (f" (attached to {row.instance_id}); detach it first"
                                    if row.instance_id else ""),
                                 resource="volume", ec2_code="VolumeInUse")
            if dry_run:
                raise DryRunPassed("DeleteVolume would have succeeded")
            row.state = "deleting"
            op = self.ctrl.ops.new("volume-delete", account_id=caller.account_id,
                                   target_kind="volume", target_id=vid,
                                   requested_by=caller.access_key_id)
            s.add(op)
        self.ctrl.ops.start(op)

    async def _delete(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Volume, ctx.target_id)
        if row is None:
            return {}
        await self.ctrl.node(row.node_id).volume_delete(row.id)
        async with self.ctrl.store.write() as s:
            obj = await s.get(Volume, row.id)
            if obj is not None:
                await self.ctrl.tags.drop(s, obj.id)
                await s.delete(obj)
        return {"volume_id": row.id}

    async def attach(self, caller: Caller, vid: str, instance_ref: str, device: str,
                     dry_run: bool = False) -> Volume:
        if not DEVICE.match(device or ""):
            raise Invalid(f"device {device!r} must be like /dev/sdf, /dev/xvdf or /dev/vdb",
                          field="Device")
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, vid)
            inst = await self.ctrl.instances.resolve(s, caller, instance_ref,
                                                     include_terminated=True)
            if inst.state in ("terminated", "shutting-down"):
                raise WrongState(f"instance {inst.id} is {inst.state}", resource="instance",
                                 ec2_code="IncorrectInstanceState")
            if row.state != "available" or row.instance_id is not None:
                raise WrongState(f"volume {vid} is {row.state}; it must be available",
                                 resource="volume", ec2_code="VolumeInUse")
            if row.availability_zone != self.ctrl.settings.availability_zone:
                raise Invalid(f"volume {vid} is in {row.availability_zone}",
                              resource="volume", ec2_code="InvalidVolume.ZoneMismatch")
            if await s.scalar(select(Volume.id).where(Volume.instance_id == inst.id,
                                                      Volume.device == device)):
                raise Invalid(f"device {device} is already used on {inst.id}", field="Device",
                              ec2_code="InvalidParameterValue")
            if dry_run:
                raise DryRunPassed("AttachVolume would have succeeded")
            row.instance_id, row.device = inst.id, device
            row.attach_state, row.attach_time, row.state = "attached", utcnow(), "in-use"
        return row

    async def detach(self, caller: Caller, vid: str, instance_ref: str | None = None,
                     force: bool = False, dry_run: bool = False) -> Volume:
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, vid)
            if row.instance_id is None:
                raise WrongState(f"volume {vid} is not attached", resource="volume",
                                 ec2_code="IncorrectState")
            if instance_ref is not None:
                inst = await self.ctrl.instances.resolve(s, caller, instance_ref,
                                                         include_terminated=True)
                if inst.id != row.instance_id:
                    raise Invalid(f"volume {vid} is attached to {row.instance_id}, not "
                                  f"{inst.id}", field="InstanceId",
                                  ec2_code="InvalidAttachment.NotFound")
            if dry_run:
                raise DryRunPassed("DetachVolume would have succeeded")
            detached = Volume(id=row.id, instance_id=row.instance_id, device=row.device,
                              attach_time=row.attach_time, attach_state="detaching",
                              delete_on_termination=row.delete_on_termination)
            row.instance_id = row.device = row.attach_state = row.attach_time = None
            row.state = "available"
        return detached

    async def on_instance_terminated(self, s: AsyncSession, iid: str) -> builtins.list[str]:
        """Detach the instance's volumes; returns those to delete (DeleteOnTermination)."""
        doomed = []
        for row in await s.scalars(select(Volume).where(Volume.instance_id == iid)):
            row.instance_id = row.device = row.attach_state = row.attach_time = None
            row.state = "available"
            if row.delete_on_termination:
                row.state = "deleting"
                doomed.append(row.id)
        return doomed

    # -- snapshots -------------------------------------------------------------------------
    async def snapshot(self, caller: Caller, vid: str, description: str = "",
                       tags: dict[str, str] | None = None, dry_run: bool = False
                       ) -> tuple[Snapshot, Operation]:
        if len(description) > 255:
            raise Invalid("Description is at most 255 characters", field="Description")
        async with self.ctrl.store.write() as s:
            vol = await self.resolve(s, caller, vid)
            if vol.state not in ("available", "in-use"):
                raise WrongState(f"volume {vid} is {vol.state}", resource="volume",
                                 ec2_code="IncorrectState")
            row = Snapshot(id=ids.new_id("snapshot"), account_id=caller.account_id,
                           node_id=vol.node_id, volume_id=vid, volume_size=vol.size,
                           state="pending", description=description, created_at=utcnow())
            s.add(row)
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "snapshot", tags)
            if dry_run:
                raise DryRunPassed("CreateSnapshot would have succeeded")
            op = self.ctrl.ops.new("snapshot-create", account_id=caller.account_id,
                                   target_kind="snapshot", target_id=row.id,
                                   requested_by=caller.access_key_id)
            s.add(op)
        self.ctrl.ops.start(op)
        return row, op

    async def _snapshot(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Snapshot, ctx.target_id)
        if row is None or row.state != "pending":
            return {}
        try:
            await self.ctrl.node(row.node_id).snapshot_create(row.id, row.volume_id)
        except Exception as err:
            await self._set_snapshot(row.id, state="error", error=str(err))
            raise
        await self._set_snapshot(row.id, state="completed", progress=100)
        return {"snapshot_id": row.id}

    async def _drop_image_root(self, image_id: str) -> None:
        """A deregistered image's root disk goes with the last snapshot of it, unless another
        image or an instance still uses it."""
        async with self.ctrl.store.read() as s:
            image = await s.get(Image, image_id)
            if image is None or image.state != "deregistered" or not image.digest:
                return
            others = await s.scalar(select(Image.id).where(Image.digest == image.digest,
                                                           Image.state != "deregistered"))
            users = await s.scalar(select(Instance.id).where(Instance.image_id == image_id,
                                                             Instance.state != "terminated"))
        if not others and not users and self.ctrl.nodes:
            await self.ctrl.node(next(iter(self.ctrl.nodes))).image_delete(image.digest)

    async def _set_snapshot(self, sid: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Snapshot, sid)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    async def delete_snapshot(self, caller: Caller, sid: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.resolve_snapshot(s, caller, sid)
            user = await s.scalar(select(Image.id).where(Image.root_snapshot_id == sid,
                                                         Image.state != "deregistered"))
            if user:
                raise WrongState(f"snapshot {sid} is the root of image {user}; deregister it "
                                 "first", resource="snapshot", ec2_code="InvalidSnapshot.InUse")
            if row.state == "pending":
                raise WrongState(f"snapshot {sid} is still pending", resource="snapshot",
                                 ec2_code="IncorrectState")
            if dry_run:
                raise DryRunPassed("DeleteSnapshot would have succeeded")
            row.state = "deleting"
            op = self.ctrl.ops.new("snapshot-delete", account_id=caller.account_id,
                                   target_kind="snapshot", target_id=sid,
                                   requested_by=caller.access_key_id)
            s.add(op)
        self.ctrl.ops.start(op)

    async def _snapshot_delete(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Snapshot, ctx.target_id)
        if row is None:
            return {}
        if row.image_id is None and row.node_id is not None:
            await self.ctrl.node(row.node_id).snapshot_delete(row.id)
        elif row.image_id is not None:
            await self._drop_image_root(row.image_id)
        async with self.ctrl.store.write() as s:
            obj = await s.get(Snapshot, row.id)
            if obj is not None:
                await self.ctrl.tags.drop(s, obj.id)
                await s.delete(obj)
        return {"snapshot_id": row.id}

