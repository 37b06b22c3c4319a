"""Volumes: qcow2 files on the node, made and deleted by operations, attached to instances.
One implementation behind the native API, the CLI and EC2's volume actions.

Attaching to a stopped instance is recorded at once: the volume is its extra disk at the next
start. Attaching to or detaching from a running instance is an operation that plugs the disk in
or out over QMP (``node/driver/hotplug.py``); the volume shows ``attaching``/``detaching`` until
the guest has it or has let go. A guest that does not let go in time keeps the volume attached
(nothing changes) and the operation says so; ``force`` then restarts the instance without it.
A volume's name is its ``Name`` tag, as on EC2."""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import quotas, volume_io
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Exists, Invalid, NotFound, WrongState
from corral.node.spec import GUEST_HOLDS_DISK, VolumeAttachment
from corral.store.models import Image, Instance, Operation, Tag, Volume, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller

GIB = 1 << 30
MAX_GIB = 16384
VOLUME_TYPES = ("standard", "gp2", "gp3", "io1", "io2", "sc1", "st1")


def io_limits(row: Volume) -> volume_io.IoLimits:
    return volume_io.limits(row.volume_type, row.size, row.iops, row.throughput)


def io_args(row: Volume) -> dict[str, int]:
    """The volume's IO limits as the node's volume_attach takes them."""
    io = io_limits(row)
    return {"iops": io.iops, "iops_burst": io.iops_burst, "bps": io.bps}


@dataclass(frozen=True)
class LaunchVolume:
    """A volume RunInstances' BlockDeviceMapping asks for: blank (``size``) or from a
    snapshot, attached at ``device``."""

    device: str
    size: int | None = None
    snapshot_id: str | None = None
    volume_type: str = "standard"
    delete_on_termination: bool = True


DEVICE = re.compile(r"^/dev/(sd[b-z]|xvd[b-z]|vd[b-z])$")
ROOT_DEVICE = "/dev/sda1"  # EBS-style instances: their root volume, as EC2 names it
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ATTACHED = ("attaching", "attached")


def check_volume_name(name: str, field: str = "name") -> str:
    if not NAME.match(name) or ids.is_id("volume", name):
        raise Invalid(
            f"volume name {name!r} must be 1-63 lower-case letters, digits, '.', '_' "
            "or '-' (and not look like a volume id)",
            field=field,
        )
    return name


class Volumes:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("volume-create", self._create)
        ctrl.ops.register("volume-delete", self._delete)
        ctrl.ops.register("volume-attach", self._attach)
        ctrl.ops.register("volume-detach", self._detach)

    # -- lookups ---------------------------------------------------------------------------
    async def resolve(self, s: AsyncSession, caller: Caller, ref: str) -> Volume:
        """A volume of the caller's account by id (vol-…) or by name (its Name tag)."""
        if ids.is_id("volume", ref):
            row = await s.get(Volume, ref)
            if row is None or row.account_id != caller.account_id:
                raise NotFound(
                    f"the volume '{ref}' does not exist", field="VolumeId", resource="volume"
                )
            return row
        if ref.startswith("vol-"):
            raise Invalid(
                f"volume id {ref!r} is malformed (vol- and 8 or 17 hex digits)",
                field="VolumeId",
                ec2_code="InvalidVolumeID.Malformed",
            )
        found = await self._named(s, caller.account_id, ref)
        if not found:
            raise NotFound(
                f"no volume is named {ref!r}; `corral volume ls` lists yours",
                field="volume",
                resource="volume",
            )
        if len(found) > 1:
            raise Invalid(
                f"{len(found)} volumes are named {ref!r} ({', '.join(found)}); give the id",
                field="volume",
            )
        row = await s.get(Volume, found[0])
        assert row is not None
        return row

    async def _named(self, s: AsyncSession, account_id: str, name: str) -> builtins.list[str]:
        return list(
            await s.scalars(
                select(Tag.resource_id)
                .where(
                    Tag.account_id == account_id,
                    Tag.resource_type == "volume",
                    Tag.key == "Name",
                    Tag.value == name,
                )
                .order_by(Tag.resource_id)
            )
        )

    async def get(self, caller: Caller, ref: str) -> Volume:
        async with self.ctrl.store.read() as s:
            return await self.resolve(s, caller, ref)

    async def list(self, caller: Caller) -> builtins.list[Volume]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(Volume)
                    .where(Volume.account_id == caller.account_id)
                    .order_by(Volume.created_at)
                )
            )

    async def names(self, account_id: str, vids: builtins.list[str]) -> dict[str, str]:
        async with self.ctrl.store.read() as s:
            tags = await self.ctrl.tags.of(s, account_id, vids)
        return {vid: t["Name"] for vid, t in tags.items() if "Name" in t}

    async def attachments(self, s: AsyncSession, iid: str) -> builtins.list[VolumeAttachment]:
        """The instance's extra disks at its next start (its root volume is apart)."""
        rows = await s.scalars(
            select(Volume)
            .where(
                Volume.instance_id == iid,
                Volume.attach_state.in_(ATTACHED),
                Volume.device != ROOT_DEVICE,
            )
            .order_by(Volume.attach_time, Volume.id)
        )
        out = []
        for v in rows:
            io = io_limits(v)
            out.append(
                VolumeAttachment(
                    id=v.id,
                    device=v.device or "",
                    iops=io.iops,
                    iops_burst=io.iops_burst,
                    bps=io.bps,
                )
            )
        return out

    async def root_of(self, s: AsyncSession, iid: str) -> Volume | None:
        return await s.scalar(
            select(Volume).where(Volume.instance_id == iid, Volume.device == ROOT_DEVICE)
        )

    # -- create and delete -----------------------------------------------------------------
    async def create(
        self,
        caller: Caller,
        size: int | None,
        snapshot_id: str | None,
        zone: str | None = None,
        volume_type: str = "standard",
        tags: dict[str, str] | None = None,
        dry_run: bool = False,
        name: str | None = None,
        fs: str | None = None,
        label: str | None = None,
        client_token: str | None = None,
        iops: int | None = None,
        throughput: int | None = None,
    ) -> tuple[Volume, Operation | None]:
        """A new volume of ``size`` GiB, empty, formatted with ``fs`` (labelled with its name),
        or holding a snapshot's content (a restore). With a ``client_token`` already used by
        this account, that volume again (EC2's idempotency; boto3 always sends one)."""
        zone = zone or self.ctrl.settings.availability_zone
        if zone != self.ctrl.settings.availability_zone:
            raise Invalid(
                f"availability zone {zone!r} does not exist; this Corral has "
                f"{self.ctrl.settings.availability_zone}",
                field="AvailabilityZone",
            )
        if volume_type not in VOLUME_TYPES:
            raise Invalid(
                f"VolumeType {volume_type!r} must be one of {', '.join(VOLUME_TYPES)}",
                field="VolumeType",
            )
        if size is None and snapshot_id is None:
            raise Invalid(
                "give Size (GiB) or SnapshotId", field="Size", ec2_code="MissingParameter"
            )
        if size is not None and not 1 <= size <= MAX_GIB:
            raise Invalid(f"Size {size} must be 1-{MAX_GIB} GiB", field="Size")
        volume_io.check(volume_type, size or 1, iops, throughput)
        if fs is not None and snapshot_id is not None:
            raise Invalid(
                "a volume restored from a snapshot has the snapshot's content; leave fs out",
                field="fs",
            )
        if fs is not None and fs != "ext4":
            raise Invalid(
                f"fs {fs!r}: Corral formats ext4 (or leave it out: an empty disk)", field="fs"
            )
        if name is not None:
            check_volume_name(name)
        tags = dict(tags or {})
        if name is not None:
            tags["Name"] = name
        async with self.ctrl.store.write() as s:
            if client_token is not None:
                done = await s.scalar(
                    select(Volume).where(
                        Volume.account_id == caller.account_id,
                        Volume.client_token == client_token,
                    )
                )
                if done is not None:
                    if (size is not None and size != done.size) or (
                        snapshot_id != done.snapshot_id or volume_type != done.volume_type
                    ):
                        raise Invalid(
                            f"client token {client_token!r} was used for volume {done.id} "
                            "with other parameters; use a new token",
                            field="ClientToken",
                            ec2_code="IdempotentParameterMismatch",
                        )
                    if dry_run:
                        raise DryRunPassed("CreateVolume would have succeeded")
                    return done, None
            snap = None
            if snapshot_id is not None:
                snap = await self.ctrl.snapshots.resolve(s, caller, snapshot_id)
                if snap.state != "completed":
                    raise WrongState(
                        f"snapshot {snap.id} is {snap.state}",
                        resource="snapshot",
                        ec2_code="IncorrectState",
                    )
                if size is None:
                    size = snap.volume_size
                if size < snap.volume_size:
                    raise Invalid(
                        f"Size {size} GiB is smaller than snapshot {snap.id} "
                        f"({snap.volume_size} GiB)",
                        field="Size",
                    )
            assert size is not None
            if "Name" in tags and await self._named(s, caller.account_id, tags["Name"]):
                raise Exists(
                    f"a volume named {tags['Name']!r} exists already; choose another name",
                    field="name",
                    resource="volume",
                )
            node_id = (snap.node_id if snap is not None else None) or next(
                iter(self.ctrl.nodes), None
            )
            row = Volume(
                id=ids.new_id("volume"),
                account_id=caller.account_id,
                node_id=node_id,
                size=size,
                state="creating",
                volume_type=volume_type,
                iops=iops,
                throughput=throughput,
                availability_zone=zone,
                snapshot_id=snapshot_id,
                client_token=client_token,
                created_at=utcnow(),
            )
            s.add(row)
            await quotas.enforce(s, self.ctrl.settings, caller.account_id, "volumes", "volume_gib")
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "volume", tags)
            if dry_run:
                raise DryRunPassed("CreateVolume would have succeeded")
            op = self.ctrl.ops.new(
                "volume-create",
                account_id=caller.account_id,
                target_kind="volume",
                target_id=row.id,
                requested_by=caller.access_key_id,
                params={
                    "image_id": snap.image_id if snap else None,
                    "fs": fs,
                    "label": (label or name or "")[:16],
                },
            )
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
        await self.make(row, digest, ctx.params.get("fs"), ctx.params.get("label") or "")
        await self._set(row.id, state="available" if row.instance_id is None else "in-use")
        return {"volume_id": row.id}

    async def make(
        self, row: Volume, image_digest: str | None, fs: str | None = None, label: str = ""
    ) -> None:
        """The volume's file on its node (idempotent); on failure the volume is in ``error``."""
        snap = None if image_digest else row.snapshot_id
        try:
            await self.ctrl.node(row.node_id).volume_create(
                row.id, row.size * GIB, snap, image_digest, fs=fs, label=label
            )
        except Exception as err:
            await self._set(row.id, state="error", error=str(err))
            raise

    async def _set(self, vid: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Volume, vid)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    async def delete(self, caller: Caller, vid: str, dry_run: bool = False) -> Operation:
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, vid)
            if row.instance_id is not None or row.state not in ("available", "error"):
                where = await self._where(s, row)
                raise WrongState(
                    f"volume {row.id} is {row.state}"
                    + (f" (attached to {where}); detach it first" if where else ""),
                    resource="volume",
                    ec2_code="VolumeInUse",
                )
            if dry_run:
                raise DryRunPassed("DeleteVolume would have succeeded")
            row.state = "deleting"
            op = self.ctrl.ops.new(
                "volume-delete",
                account_id=caller.account_id,
                target_kind="volume",
                target_id=row.id,
                requested_by=caller.access_key_id,
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return op

    async def _delete(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Volume, ctx.target_id)
        if row is None:
            return {}
        await self.ctrl.node(row.node_id).volume_delete(row.id)
        async with self.ctrl.store.write() as s:
            obj = await s.get(Volume, row.id)
            if obj is not None:
                await self.ctrl.tags.delete_resource(s, obj)
        return {"volume_id": row.id}

    async def _where(self, s: AsyncSession, row: Volume) -> str:
        if row.instance_id is None:
            return ""
        inst = await s.get(Instance, row.instance_id)
        return f"{inst.name} ({inst.id})" if inst is not None else row.instance_id

    async def update(
        self,
        caller: Caller,
        ref: str,
        name: str | None = None,
        delete_on_termination: bool | None = None,
    ) -> Volume:
        """Rename a volume, or say whether it goes with the instance it is attached to."""
        if name is not None:
            check_volume_name(name)
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            if name is not None:
                others = [v for v in await self._named(s, caller.account_id, name) if v != row.id]
                if others:
                    raise Exists(
                        f"a volume named {name!r} exists already ({others[0]})",
                        field="name",
                        resource="volume",
                    )
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "volume", {"Name": name})
            if delete_on_termination is not None:
                row.delete_on_termination = delete_on_termination
        return row

    # -- attach and detach -----------------------------------------------------------------
    async def attach(
        self,
        caller: Caller,
        vid: str,
        instance_ref: str,
        device: str | None,
        dry_run: bool = False,
        delete_on_termination: bool | None = None,
    ) -> tuple[Volume, Operation | None]:
        """Attach the volume; at once to a stopped instance, by an operation (a hot-plug) to
        one that runs or is starting. A volume attached elsewhere is refused, unchanged."""
        if device is not None and not DEVICE.match(device):
            raise Invalid(
                f"device {device!r} must be like /dev/sdf, /dev/xvdf or /dev/vdb", field="Device"
            )
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, vid)
            inst = await self.ctrl.instances.resolve(
                s, caller, instance_ref, include_terminated=True
            )
            if inst.state in ("terminated", "shutting-down"):
                raise WrongState(
                    f"instance {inst.name} ({inst.id}) is {inst.state}",
                    resource="instance",
                    ec2_code="IncorrectInstanceState",
                )
            if row.instance_id is not None:
                where = await self._where(s, row)
                raise WrongState(
                    f"volume {row.id} is attached to {where}; detach it first "
                    "(a volume is attached to one instance at a time)",
                    resource="volume",
                    ec2_code="VolumeInUse",
                )
            if row.state != "available":
                raise WrongState(
                    f"volume {row.id} is {row.state}; it must be available",
                    resource="volume",
                    ec2_code="IncorrectState",
                )
            if row.availability_zone != self.ctrl.settings.availability_zone:
                raise Invalid(
                    f"volume {row.id} is in {row.availability_zone}",
                    resource="volume",
                    ec2_code="InvalidVolume.ZoneMismatch",
                )
            if row.node_id is not None and inst.node_id is not None and row.node_id != inst.node_id:
                raise Invalid(
                    f"volume {row.id} is on node {row.node_id}, instance {inst.name} "
                    f"on {inst.node_id}; a volume attaches on its own node",
                    field="instance",
                    ec2_code="InvalidVolume.ZoneMismatch",
                )
            used = set(await s.scalars(select(Volume.device).where(Volume.instance_id == inst.id)))
            if device is None:
                device = next(
                    (
                        f"/dev/vd{c}"
                        for c in "bcdefghijklmnopqrstuvwxyz"
                        if f"/dev/vd{c}" not in used
                    ),
                    None,
                )
                if device is None:
                    raise Invalid(
                        f"instance {inst.name} has no free device name left", field="Device"
                    )
            elif device in used:
                raise Invalid(
                    f"device {device} is already used on {inst.id}",
                    field="Device",
                    ec2_code="InvalidParameterValue",
                )
            if dry_run:
                raise DryRunPassed("AttachVolume would have succeeded")
            hot = inst.state != "stopped"
            row.instance_id, row.device, row.attach_time = inst.id, device, utcnow()
            row.attach_state, row.state = "attaching" if hot else "attached", "in-use"
            if delete_on_termination is not None:
                row.delete_on_termination = delete_on_termination
            op = None
            if hot:
                op = self.ctrl.ops.new(
                    "volume-attach",
                    account_id=caller.account_id,
                    target_kind="volume",
                    target_id=row.id,
                    requested_by=caller.access_key_id,
                    params={"instance_id": inst.id},
                )
                s.add(op)
        if op is not None:
            self.ctrl.ops.start(op)
        return row, op

    async def attach_at_launch(
        self, s: AsyncSession, caller: Caller, inst: Instance, refs: builtins.list[str]
    ) -> None:
        """Attach volumes to an instance being created, in its launch's transaction, so its
        first start has them (``/dev/vdb``, ``/dev/vdc`` … in this order)."""
        for n, ref in enumerate(refs):
            row = await self.resolve(s, caller, ref)
            if row.instance_id is not None or row.state != "available":
                where = await self._where(s, row)
                raise WrongState(
                    f"volume {row.id} is {row.state}"
                    + (f" (attached to {where})" if where else "")
                    + "; it must be available",
                    resource="volume",
                    ec2_code="VolumeInUse",
                )
            row.instance_id, row.device = inst.id, f"/dev/vd{'bcdefghijklmnopqrstuvwxyz'[n]}"
            row.attach_state, row.attach_time, row.state = "attached", utcnow(), "in-use"

    async def _attach(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.params["instance_id"]
        async with self.ctrl.instances.lock(iid):
            async with self.ctrl.store.read() as s:
                row = await s.get(Volume, ctx.target_id)
                inst = await s.get(Instance, iid)
            if row is None or row.instance_id != iid or row.attach_state not in ATTACHED:
                return {"volume_id": ctx.target_id, "changed": "meanwhile"}
            plugged = False
            if inst is not None and inst.state == "running":
                await ctx.progress(0.3, f"plugging {row.id} into {inst.name}")
                try:
                    plugged = await self.ctrl.node(inst.node_id).volume_attach(
                        iid, row.id, **io_args(row)
                    )
                except Exception as err:
                    await self._release(row.id, iid, f"attach failed: {err}")
                    raise
            await self._set(row.id, attach_state="attached")
        return {"volume_id": row.id, "instance_id": iid, "hot": plugged}

    async def _release(self, vid: str, iid: str, error: str = "") -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Volume, vid)
            if row is not None and row.instance_id == iid:
                row.instance_id = row.device = row.attach_state = row.attach_time = None
                row.state = "available"
                row.error = error

    async def detach(
        self,
        caller: Caller,
        vid: str,
        instance_ref: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        timeout: float | None = None,
        device: str | None = None,
    ) -> tuple[Volume, Operation | None]:
        """Detach the volume: at once from a stopped instance, by an operation (an unplug the
        guest must answer) from one that runs. Returns the attachment as it was. ``device``,
        when given, must be where the volume is attached."""
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, vid)
            if row.instance_id is None:
                raise WrongState(
                    f"volume {row.id} is not attached", resource="volume", ec2_code="IncorrectState"
                )
            if device is not None and device != row.device:
                raise Invalid(
                    f"volume {row.id} is attached as {row.device}, not {device}",
                    field="Device",
                    ec2_code="InvalidAttachment.NotFound",
                )
            if instance_ref is not None:
                inst = await self.ctrl.instances.resolve(
                    s, caller, instance_ref, include_terminated=True
                )
                if inst.id != row.instance_id:
                    raise Invalid(
                        f"volume {row.id} is attached to {row.instance_id}, not {inst.id}",
                        field="InstanceId",
                        ec2_code="InvalidAttachment.NotFound",
                    )
            if row.device == ROOT_DEVICE:
                raise WrongState(
                    f"volume {row.id} is the root disk of {row.instance_id}; it "
                    "goes with the instance",
                    resource="volume",
                    ec2_code="OperationNotPermitted",
                )
            if row.attach_state == "detaching":
                raise WrongState(
                    f"volume {row.id} is already being detached",
                    resource="volume",
                    ec2_code="IncorrectState",
                )
            owner = await s.get(Instance, row.instance_id)
            if dry_run:
                raise DryRunPassed("DetachVolume would have succeeded")
            before = Volume(
                id=row.id,
                instance_id=row.instance_id,
                device=row.device,
                attach_time=row.attach_time,
                attach_state="detaching",
                delete_on_termination=row.delete_on_termination,
            )
            op = None
            if owner is None or owner.state in ("stopped", "terminated"):
                row.instance_id = row.device = row.attach_state = row.attach_time = None
                row.state = "available"
            else:
                row.attach_state = "detaching"
                op = self.ctrl.ops.new(
                    "volume-detach",
                    account_id=caller.account_id,
                    target_kind="volume",
                    target_id=row.id,
                    requested_by=caller.access_key_id,
                    params={"instance_id": owner.id, "force": force, "timeout": timeout},
                )
                s.add(op)
        if op is not None:
            self.ctrl.ops.start(op)
        return before, op

    async def _detach(self, ctx: Any) -> dict[str, Any]:
        iid, force = ctx.params["instance_id"], bool(ctx.params.get("force"))
        timeout = float(ctx.params.get("timeout") or 20.0)
        async with self.ctrl.instances.lock(iid):
            async with self.ctrl.store.read() as s:
                row = await s.get(Volume, ctx.target_id)
                inst = await s.get(Instance, iid)
            if ctx.params.get("restarting") and inst is not None:
                # resumed after a crash in the middle of a forced detach: QEMU may be down
                # and the volume released already; finish the restart (each step idempotent)
                how = await self._restart_without(inst, ctx.target_id)
                return {"volume_id": ctx.target_id, "instance_id": iid, "how": how}
            if row is None or row.instance_id != iid:
                return {"volume_id": ctx.target_id, "changed": "meanwhile"}
            how = "recorded"
            if inst is not None and inst.state in ("running", "pending", "stopping"):
                node = self.ctrl.node(inst.node_id)
                await ctx.progress(0.2, f"asking {inst.name} to release {row.id}")
                try:
                    how = (
                        "unplugged"
                        if await node.volume_detach(iid, row.id, timeout)
                        else "recorded"
                    )
                except WrongState as err:
                    if err.reason != GUEST_HOLDS_DISK:
                        raise
                    if not force:
                        await self._set(row.id, attach_state="attached")
                        raise
                    await ctx.progress(
                        0.5, f"{err.message}; forcing: restarting {inst.name} without the volume"
                    )
                    await ctx.checkpoint(restarting=True)  # before QEMU goes down
                    how = await self._restart_without(inst, row.id)
            await self._release(row.id, iid)
        return {"volume_id": row.id, "instance_id": iid, "how": how}

    async def _restart_without(self, inst: Instance, vid: str) -> str:
        """Force: power the instance off (the disk goes with QEMU), release the volume, start
        the instance again without it. The caller holds the instance's lock."""
        mgr = self.ctrl.instances
        node = self.ctrl.node(inst.node_id)
        await node.instance_stop(inst.id, mgr._timeout(inst, None))
        await self._release(vid, inst.id)
        async with self.ctrl.store.read() as s:
            fresh = await s.get(Instance, inst.id)
            spec = await mgr.spec(s, fresh) if fresh is not None else None
        if spec is not None and fresh is not None and fresh.desired_state == "running":
            pid = await node.instance_start(spec)
            await mgr._set(inst.id, pid=pid, state="running")
        return "forced (instance restarted)"

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

    # -- volumes made at launch (RunInstances BlockDeviceMapping) ---------------------------
    async def new_at_launch(
        self, s: AsyncSession, caller: Caller, inst: Instance, want: LaunchVolume
    ) -> Volume:
        """A volume made for an instance being created, in its launch's transaction: attached
        at ``want.device`` and made on the node before the instance first starts."""
        if not DEVICE.match(want.device):
            raise Invalid(
                f"device {want.device!r} must be like /dev/sdf, /dev/xvdf or /dev/vdb",
                field="BlockDeviceMapping.DeviceName",
            )
        if want.volume_type not in VOLUME_TYPES:
            raise Invalid(
                f"VolumeType {want.volume_type!r} must be one of {', '.join(VOLUME_TYPES)}",
                field="BlockDeviceMapping.Ebs.VolumeType",
            )
        size = want.size
        if want.snapshot_id is not None:
            snap = await self.ctrl.snapshots.resolve(s, caller, want.snapshot_id)
            if snap.state != "completed":
                raise WrongState(
                    f"snapshot {snap.id} is {snap.state}",
                    resource="snapshot",
                    ec2_code="IncorrectState",
                )
            if size is None:
                size = snap.volume_size
            elif size < snap.volume_size:
                raise Invalid(
                    f"volume size {size} GiB at {want.device} is smaller than snapshot "
                    f"{snap.id} ({snap.volume_size} GiB)",
                    field="BlockDeviceMapping.Ebs.VolumeSize",
                )
        if size is None:
            raise Invalid(
                f"give Ebs.VolumeSize or Ebs.SnapshotId for {want.device}",
                field="BlockDeviceMapping.Ebs.VolumeSize",
                ec2_code="MissingParameter",
            )
        if not 1 <= size <= MAX_GIB:
            raise Invalid(f"VolumeSize {size} must be 1-{MAX_GIB} GiB", field="Ebs.VolumeSize")
        row = Volume(
            id=ids.new_id("volume"),
            account_id=inst.account_id,
            node_id=inst.node_id,
            size=size,
            state="creating",
            volume_type=want.volume_type,
            availability_zone=self.ctrl.settings.availability_zone,
            snapshot_id=want.snapshot_id,
            instance_id=inst.id,
            device=want.device,
            attach_state="attached",
            attach_time=utcnow(),
            delete_on_termination=want.delete_on_termination,
            created_at=utcnow(),
        )
        s.add(row)
        return row

    async def ensure_launch_volumes(self, iid: str) -> None:
        """Make on the node the volumes its launch asked for that are still to be made
        (idempotent: a resumed launch makes only what is missing)."""
        async with self.ctrl.store.read() as s:
            rows = list(
                await s.scalars(
                    select(Volume).where(
                        Volume.instance_id == iid,
                        Volume.state == "creating",
                        Volume.device != ROOT_DEVICE,
                    )
                )
            )
        for row in rows:
            await self.make(row, None)
            await self._set(row.id, state="in-use")

    # -- root volumes (EBS-style images) ----------------------------------------------------
    def new_root(self, inst: Instance, image: Image) -> Volume:
        """The root volume of an instance of an EBS-style image: made from the image's root
        snapshot when the instance is created, deleted with it (DeleteOnTermination)."""
        size = max(1, -(-inst.disk_size // GIB))
        inst.disk_size = size * GIB
        return Volume(
            id=ids.new_id("volume"),
            account_id=inst.account_id,
            node_id=inst.node_id,
            size=size,
            state="creating",
            volume_type="standard",
            availability_zone=self.ctrl.settings.availability_zone,
            snapshot_id=image.root_snapshot_id,
            instance_id=inst.id,
            device=ROOT_DEVICE,
            attach_state="attached",
            attach_time=utcnow(),
            delete_on_termination=True,
            created_at=utcnow(),
        )

    async def ensure_root(self, iid: str) -> None:
        """Make the instance's root volume on its node if it is still to be made (idempotent)."""
        async with self.ctrl.store.read() as s:
            row = await self.root_of(s, iid)
            inst = await s.get(Instance, iid)
            image = await s.get(Image, inst.image_id) if inst is not None else None
        if row is None or row.state != "creating" or image is None:
            return
        await self.make(row, image.digest)
        await self._set(row.id, state="in-use")
