"""Images made and shared by accounts: CreateImage (an instance's disk flattened into a new
image with the same kernel and initrd), RegisterImage (from a snapshot), DeregisterImage, and
launch permissions (other accounts, or everyone)."""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Exists, Forbidden, Invalid, NotFound, WrongState
from corral.images import fields
from corral.store.models import (
    Account,
    Image,
    Instance,
    LaunchPermission,
    Operation,
    Snapshot,
    Tag,
    Volume,
    utcnow,
)

if TYPE_CHECKING:
    from corral.controller.service import Controller

IMAGE_NAME = re.compile(r"^[A-Za-z0-9()\[\] ./'@_-]{3,128}$")


def check_image_name(name: str) -> str:
    if not IMAGE_NAME.match(name or ""):
        raise Invalid(
            f"image name {name!r} must be 3-128 letters, digits, spaces or ( ) [ ] . / - ' @ _",
            field="Name",
        )
    return fields.check_name(name, field="Name")


class ImagePublishing:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("image-capture", self._capture)

    def visible(self, caller: Caller) -> Any:
        """Images the caller may see and launch by id: public, its own, shared with it (and,
        for an admin, built-in images not yet published)."""
        shared = select(LaunchPermission.image_id).where(
            LaunchPermission.account_id == caller.account_id
        )
        return or_(
            Image.public.is_(True),
            Image.account_id == caller.account_id,
            Image.id.in_(shared),
            and_(Image.account_id.is_(None), literal(caller.admin)),
        )

    def by_name(self, caller: Caller) -> Any:
        """Images a name may resolve to: the caller's own and public ones, never another
        account's private image (shared images are launched by id)."""
        return or_(
            Image.public.is_(True),
            Image.account_id == caller.account_id,
            and_(Image.account_id.is_(None), literal(caller.admin)),
        )

    async def owned(self, s: AsyncSession, caller: Caller, image_id: str) -> Image:
        """An image the caller owns (built-in images count as the admin's)."""
        row = await self.get_visible(s, caller, image_id)
        if row.account_id != caller.account_id and not (row.account_id is None and caller.admin):
            raise Invalid(
                f"image {image_id} belongs to another account; only its owner may change it",
                field="ImageId",
                ec2_code="AuthFailure",
            )
        return row

    async def get_visible(self, s: AsyncSession, caller: Caller, image_id: str) -> Image:
        if not ids.is_id("image", image_id):
            raise Invalid(
                f"image id {image_id!r} is malformed (ami- and 8 or 17 hex digits)",
                field="ImageId",
                ec2_code="InvalidAMIID.Malformed",
            )
        row = await s.scalar(
            select(Image).where(
                Image.id == image_id, self.visible(caller), Image.state != "deregistered"
            )
        )
        if row is None:
            raise NotFound(
                f"the image id '[{image_id}]' does not exist", field="ImageId", resource="image"
            )
        return row

    async def list(self, caller: Caller) -> builtins.list[Image]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(Image)
                    .where(self.visible(caller), Image.state != "deregistered")
                    .order_by(Image.created_at)
                )
            )

    async def permissions(
        self, s: AsyncSession, image_ids: builtins.list[str]
    ) -> dict[str, builtins.list[str]]:
        out: dict[str, builtins.list[str]] = {}
        if image_ids:
            for iid, acct in await s.execute(
                select(LaunchPermission.image_id, LaunchPermission.account_id).where(
                    LaunchPermission.image_id.in_(image_ids)
                )
            ):
                out.setdefault(iid, []).append(acct)
        return out

    # -- create from an instance, register from a snapshot ---------------------------------
    async def _new_image(
        self,
        s: AsyncSession,
        caller: Caller,
        name: str,
        description: str,
        base: Image | None,
        **extra: Any,
    ) -> Image:
        """A pending EBS-style image row; without ``base`` (no kernel known) an imported-style
        disk that boots by firmware."""
        fields.check_description(description, field="Description")
        if await s.scalar(
            select(Image.id).where(
                Image.account_id == caller.account_id,
                Image.name == name,
                Image.state != "deregistered",
            )
        ):
            raise Exists(
                f"an image named {name!r} already exists in this account",
                field="Name",
                resource="image",
                ec2_code="InvalidAMIName.Duplicate",
            )
        version = ids.new_id("image")[4:12]  # names repeat after deregistration; versions not
        row = Image(
            id=ids.new_id("image"),
            account_id=caller.account_id,
            name=name,
            version=version,
            digest="",
            state="pending",
            public=False,
            arch=base.arch if base is not None else "x86_64",
            kind=base.kind if base is not None else "imported",
            description=description,
            default_user=base.default_user if base is not None else "root",
            size=0,
            virtual_size=base.virtual_size if base is not None else 0,
            created_at=utcnow(),
            root_device_type="ebs",
            **extra,
        )
        snap = Snapshot(
            id=ids.new_id("snapshot"),
            account_id=caller.account_id,
            node_id=next(iter(self.ctrl.nodes), None),
            volume_id="vol-ffffffff",
            volume_size=max(1, -(-(base.virtual_size if base is not None else 0) // (1 << 30))),
            state="pending",
            image_id=row.id,
            description=f"Created by CreateImage for {row.id}",
            created_at=utcnow(),
        )
        row.root_snapshot_id = snap.id
        s.add(row)
        s.add(snap)
        return row

    async def create_image(
        self,
        caller: Caller,
        instance_ref: str,
        name: str,
        description: str = "",
        tags: dict[str, str] | None = None,
        dry_run: bool = False,
        no_reboot: bool = False,
    ) -> tuple[Image, Operation]:
        """As on AWS, a running instance is powered off in order for the copy and started
        again (``no_reboot`` copies it as it runs: crash-consistent)."""
        check_image_name(name)
        async with self.ctrl.store.write() as s:
            inst = await self.ctrl.instances.resolve(
                s, caller, instance_ref, include_terminated=True
            )
            if inst.state not in ("running", "stopped"):
                raise WrongState(
                    f"instance {inst.id} is {inst.state}; CreateImage needs a "
                    "running or stopped instance",
                    resource="instance",
                    ec2_code="IncorrectInstanceState",
                )
            base = await s.get(Image, inst.image_id)
            if base is None:
                raise NotFound(f"the image of {inst.id} is gone", resource="image")
            row = await self._new_image(
                s, caller, name, description, base, source_instance_id=inst.id
            )
            row.virtual_size = inst.disk_size
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "image", tags)
            if dry_run:
                raise DryRunPassed("CreateImage would have succeeded")
            op = self.ctrl.ops.new(
                "image-capture",
                account_id=caller.account_id,
                target_kind="image",
                target_id=row.id,
                requested_by=caller.access_key_id,
                params={
                    "base": base.digest,
                    "instance_id": inst.id,
                    "node_id": inst.node_id,
                    "reboot": inst.state == "running" and not no_reboot,
                },
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return row, op

    async def register(
        self,
        caller: Caller,
        name: str,
        snapshot_id: str,
        kernel_image: str | None = None,
        description: str = "",
        dry_run: bool = False,
    ) -> tuple[Image, Operation]:
        """An image whose root disk is ``snapshot_id``; the kernel and initrd come from the
        image the snapshot descends from, or from ``kernel_image`` (an ami- id)."""
        check_image_name(name)
        async with self.ctrl.store.write() as s:
            snap = await self.ctrl.snapshots.resolve(s, caller, snapshot_id)
            if snap.state != "completed":
                raise WrongState(
                    f"snapshot {snapshot_id} is {snap.state}",
                    resource="snapshot",
                    ec2_code="IncorrectState",
                )
            base = None
            if kernel_image:
                base = await self.get_visible(s, caller, kernel_image)
            else:
                base = await self._lineage(s, snap)
            # no kernel known (a snapshot of a disk made some other way, no KernelId): the
            # image boots from the disk's own boot loader, by firmware, as imported disks do
            row = await self._new_image(s, caller, name, description, base)
            row.virtual_size = snap.volume_size << 30
            if dry_run:
                raise DryRunPassed("RegisterImage would have succeeded")
            params: dict[str, Any] = {
                "base": base.digest if base is not None else "",
                "node_id": snap.node_id,
            }
            if snap.image_id:
                origin = await s.get(Image, snap.image_id)
                params["base_root"] = origin.digest if origin is not None else params["base"]
            else:
                params["snapshot_id"] = snap.id
            op = self.ctrl.ops.new(
                "image-capture",
                account_id=caller.account_id,
                target_kind="image",
                target_id=row.id,
                requested_by=caller.access_key_id,
                params=params,
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return row, op

    async def _lineage(self, s: AsyncSession, snap: Snapshot) -> Image | None:
        """The image a snapshot's content came from (through volumes made from snapshots)."""
        seen: set[str] = set()
        while snap.id not in seen:
            seen.add(snap.id)
            if snap.image_id:
                return await s.get(Image, snap.image_id)
            vol = await s.get(Volume, snap.volume_id)
            if vol is None or vol.snapshot_id is None:
                return None
            parent = await s.get(Snapshot, vol.snapshot_id)
            if parent is None:
                return None
            snap = parent
        return None

    async def _capture(self, ctx: Any) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Image, ctx.target_id)
        if row is None or row.state != "pending":
            return {}
        p = ctx.params
        node = self.ctrl.node(p.get("node_id") or next(iter(self.ctrl.nodes), None))

        async def capture() -> str:
            await ctx.progress(0.3, "flattening the disk into a new image")
            if p.get("base_root"):
                return await node.image_capture(
                    p["base_root"], row.name, row.version, row.description
                )
            return await node.image_capture(
                p["base"],
                row.name,
                row.version,
                row.description,
                instance_id=p.get("instance_id"),
                snapshot_id=p.get("snapshot_id"),
            )

        try:
            if p.get("reboot") and p.get("instance_id"):
                digest = await self._powered_off(ctx, p["instance_id"], capture)
            else:
                digest = await capture()
        except Exception as err:
            if not ctx.runs_again(err):  # a busy store runs the capture again
                await self._finish(row.id, state="failed", error=str(err))
            raise
        manifest = self.ctrl.image_store.get_manifest(digest)
        await self._finish(
            row.id,
            state="available",
            digest=digest,
            size=manifest.size,
            virtual_size=manifest.root_disk.virtual_size or row.virtual_size,
        )
        return {"image_id": row.id, "digest": digest}

    async def _powered_off(self, ctx: Any, iid: str, capture: Callable[[], Awaitable[str]]) -> str:
        """Power the instance off in order, capture, start it again — all under its lock,
        so the reconciler leaves it alone; its state stays ``running`` as in a reboot."""
        mgr = self.ctrl.instances
        async with mgr.lock(iid):
            async with self.ctrl.store.read() as s:
                inst = await s.get(Instance, iid)
                spec = await mgr.spec(s, inst) if inst is not None else None
            if (
                inst is None
                or spec is None
                or inst.state != "running"
                or inst.desired_state != "running"
            ):
                return await capture()  # it changed meanwhile: copy it as it is
            node = self.ctrl.node(inst.node_id)
            await ctx.progress(0.1, "powering the instance off for a consistent image")
            await node.instance_stop(iid, mgr._timeout(inst, None))
            try:
                return await capture()
            finally:
                await ctx.progress(0.8, "starting the instance again")
                pid = await node.instance_start(spec)
                await mgr._set(iid, pid=pid)

    async def _finish(self, image_id: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Image, image_id)
            if row is None:
                return
            error = values.pop("error", None)
            for k, v in values.items():
                setattr(row, k, v)
            if error:
                row.description = (row.description + f" (failed: {error})").strip()[:2000]
            snap = await s.get(Snapshot, row.root_snapshot_id) if row.root_snapshot_id else None
            if snap is not None:
                snap.state = "completed" if row.state == "available" else "error"
                snap.progress = 100 if row.state == "available" else 0

    async def deregister(self, caller: Caller, image_id: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.owned(s, caller, image_id)
            if dry_run:
                raise DryRunPassed("DeregisterImage would have succeeded")
            row.state = "deregistered"
            await s.execute(delete(LaunchPermission).where(LaunchPermission.image_id == row.id))
            # the row stays for the instances that refer to it; its tags go now
            await s.execute(delete(Tag).where(Tag.resource_id == row.id))
            digest = row.digest
            others = await s.scalar(
                select(Image.id).where(
                    Image.digest == digest, Image.id != row.id, Image.state != "deregistered"
                )
            )
            users = await s.scalar(
                select(Instance.id).where(
                    Instance.image_id == row.id, Instance.state != "terminated"
                )
            )
            snap = await s.scalar(select(Snapshot.id).where(Snapshot.image_id == row.id))
        # the root disk stays while instances run from it (their disks are overlays on it) and
        # while its snapshot exists (as on AWS, deregistering keeps the snapshot)
        if digest and not others and not users and not snap and self.ctrl.nodes:
            await self.ctrl.node(next(iter(self.ctrl.nodes))).image_delete(digest)

    # -- launch permissions ----------------------------------------------------------------
    async def launch_permissions(
        self, caller: Caller, image_id: str
    ) -> tuple[bool, builtins.list[str]]:
        async with self.ctrl.store.read() as s:
            row = await self.owned(s, caller, image_id)
            perms = await self.permissions(s, [row.id])
        return row.public, sorted(perms.get(row.id, []))

    async def reset_launch_permissions(
        self, caller: Caller, image_id: str, dry_run: bool = False
    ) -> None:
        """Back to private, launchable by its owner alone (EC2's ResetImageAttribute)."""
        async with self.ctrl.store.write() as s:
            row = await self.owned(s, caller, image_id)
            if dry_run:
                raise DryRunPassed("ResetImageAttribute would have succeeded")
            row.public = False
            await s.execute(delete(LaunchPermission).where(LaunchPermission.image_id == row.id))

    async def modify_launch_permissions(
        self,
        caller: Caller,
        image_id: str,
        add_users: builtins.list[str],
        remove_users: builtins.list[str],
        add_all: bool | None,
        dry_run: bool = False,
    ) -> None:
        """``add_all`` True makes the image public, False private, None leaves it."""
        for acct in add_users + remove_users:
            if not (len(acct) == 12 and acct.isdigit()):
                raise Invalid(f"UserId {acct!r} must be a 12-digit account id", field="UserId")
        async with self.ctrl.store.write() as s:
            row = await self.owned(s, caller, image_id)
            for acct in add_users:
                if await s.get(Account, acct) is None:
                    raise NotFound(
                        f"account {acct} does not exist",
                        field="UserId",
                        resource="account",
                        ec2_code="InvalidUserID.Malformed",
                    )
            if add_all and not row.public and not caller.admin:
                raise Forbidden(
                    f"only an admin may make image {row.id} public; share it with accounts "
                    "instead (launch permission for their account ids)",
                    field="LaunchPermission.Add.Group",
                    ec2_code="AuthFailure",
                )
            if dry_run:
                raise DryRunPassed("ModifyImageAttribute would have succeeded")
            if add_all is not None:
                row.public = add_all
            for acct in add_users:
                if acct != row.account_id and await s.get(LaunchPermission, (row.id, acct)) is None:
                    s.add(LaunchPermission(image_id=row.id, account_id=acct))
            if remove_users:
                await s.execute(
                    delete(LaunchPermission).where(
                        LaunchPermission.image_id == row.id,
                        LaunchPermission.account_id.in_(remove_users),
                    )
                )
