"""Snapshots: point-in-time copies of volumes, made by operations. A volume in a running
instance is copied by QEMU while the guest writes (a backup job: the copy is the disk at the
moment the job starts, crash-consistent like EBS's); a detached one by qemu-img. A restore is a
new volume made from a snapshot. One implementation behind the native API and EC2's actions."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import quotas
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Invalid, NotFound, WrongState
from corral.store.models import Image, Instance, Operation, Snapshot, Volume, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller


class Snapshots:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("snapshot-create", self._create)
        ctrl.ops.register("snapshot-delete", self._delete)

    async def resolve(self, s: AsyncSession, caller: Caller, sid: str) -> Snapshot:
        if not ids.is_id("snapshot", sid):
            raise Invalid(
                f"snapshot id {sid!r} is malformed (snap- and 8 or 17 hex digits)",
                field="SnapshotId",
                ec2_code="InvalidSnapshotID.Malformed",
            )
        row = await s.get(Snapshot, sid)
        if row is None or row.account_id != caller.account_id:
            raise NotFound(
                f"the snapshot '{sid}' does not exist", field="SnapshotId", resource="snapshot"
            )
        return row

    async def get(self, caller: Caller, sid: str) -> Snapshot:
        async with self.ctrl.store.read() as s:
            return await self.resolve(s, caller, sid)

    async def list(self, caller: Caller, volume_id: str | None = None) -> builtins.list[Snapshot]:
        async with self.ctrl.store.read() as s:
            q = select(Snapshot).where(Snapshot.account_id == caller.account_id)
            if volume_id is not None:
                q = q.where(Snapshot.volume_id == volume_id)
            return list(await s.scalars(q.order_by(Snapshot.created_at)))

    # -- create ----------------------------------------------------------------------------
    async def create(
        self,
        caller: Caller,
        vid: str,
        description: str = "",
        tags: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> tuple[Snapshot, Operation]:
        if len(description) > 255:
            raise Invalid("Description is at most 255 characters", field="Description")
        async with self.ctrl.store.write() as s:
            vol = await self.ctrl.volumes.resolve(s, caller, vid)
            if vol.state not in ("available", "in-use"):
                raise WrongState(
                    f"volume {vol.id} is {vol.state}", resource="volume", ec2_code="IncorrectState"
                )
            row = Snapshot(
                id=ids.new_id("snapshot"),
                account_id=caller.account_id,
                node_id=vol.node_id,
                volume_id=vol.id,
                volume_size=vol.size,
                state="pending",
                description=description,
                created_at=utcnow(),
            )
            s.add(row)
            await quotas.enforce(s, self.ctrl.settings, caller.account_id, "snapshots")
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "snapshot", tags)
            if dry_run:
                raise DryRunPassed("CreateSnapshot would have succeeded")
            op = self.ctrl.ops.new(
                "snapshot-create",
                account_id=caller.account_id,
                target_kind="snapshot",
                target_id=row.id,
                requested_by=caller.access_key_id,
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return row, op

    async def _create(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Snapshot, ctx.target_id)
            vol = await s.get(Volume, row.volume_id) if row is not None else None
        if row is None or row.state != "pending":
            return {}
        node = self.ctrl.node(row.node_id)
        try:
            if vol is not None and vol.instance_id is not None:
                # under the instance's lock: it neither stops nor starts while QEMU copies
                async with self.ctrl.instances.lock(vol.instance_id):
                    async with self.ctrl.store.read() as s:
                        inst = await s.get(Instance, vol.instance_id)
                    live = inst is not None and inst.state == "running"
                    await ctx.progress(
                        0.2,
                        "copying the disk in the running VM (backup job)"
                        if live
                        else "copying the disk",
                    )
                    how = await node.snapshot_create(
                        row.id, row.volume_id, inst.id if live and inst else None
                    )
            else:
                await ctx.progress(0.2, "copying the disk")
                how = await node.snapshot_create(row.id, row.volume_id)
        except Exception as err:
            await self._set(row.id, state="error", error=str(err))
            raise
        await self._set(row.id, state="completed", progress=100)
        return {"snapshot_id": row.id, "how": how}

    async def _set(self, sid: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Snapshot, sid)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    # -- restore ---------------------------------------------------------------------------
    async def restore(
        self, caller: Caller, sid: str, size: int | None = None, name: str | None = None
    ) -> tuple[Volume, Operation | None]:
        """A new volume holding the snapshot's content (the snapshot stays)."""
        return await self.ctrl.volumes.create(caller, size, sid, name=name)

    # -- delete ----------------------------------------------------------------------------
    async def delete(self, caller: Caller, sid: str, dry_run: bool = False) -> Operation:
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, sid)
            user = await s.scalar(
                select(Image.id).where(Image.root_snapshot_id == sid, Image.state != "deregistered")
            )
            if user:
                raise WrongState(
                    f"snapshot {sid} is the root of image {user}; deregister it first",
                    resource="snapshot",
                    ec2_code="InvalidSnapshot.InUse",
                )
            if row.state == "pending":
                raise WrongState(
                    f"snapshot {sid} is still pending",
                    resource="snapshot",
                    ec2_code="IncorrectState",
                )
            if dry_run:
                raise DryRunPassed("DeleteSnapshot would have succeeded")
            row.state = "deleting"
            op = self.ctrl.ops.new(
                "snapshot-delete",
                account_id=caller.account_id,
                target_kind="snapshot",
                target_id=sid,
                requested_by=caller.access_key_id,
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return op

    async def _delete(self, ctx: Any) -> dict[str, Any]:
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
                await self.ctrl.tags.delete_resource(s, obj)
        return {"snapshot_id": row.id}

    async def _drop_image_root(self, image_id: str) -> None:
        """A deregistered image's root disk goes with the last snapshot of it, unless another
        image or an instance still uses it."""
        async with self.ctrl.store.read() as s:
            image = await s.get(Image, image_id)
            if image is None or image.state != "deregistered" or not image.digest:
                return
            others = await s.scalar(
                select(Image.id).where(Image.digest == image.digest, Image.state != "deregistered")
            )
            users = await s.scalar(
                select(Instance.id).where(
                    Instance.image_id == image_id, Instance.state != "terminated"
                )
            )
        if not others and not users and self.ctrl.nodes:
            await self.ctrl.node(next(iter(self.ctrl.nodes))).image_delete(image.digest)
