"""Images as the store knows them: records for what the node image stores hold, lookups by
name or id, builds from recipes (as operations), tags, removal (refused while in use or while
another image is built on it). Import, export and verify are in image_transfer.py."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller.accounts import Caller
from corral.controller.image_transfer import ImageTransfer
from corral.errors import Exists, Invalid, NotFound, WrongState
from corral.images import busybox, debian, recipe
from corral.images.manifest import Manifest
from corral.store.models import Image, Instance, Operation, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)
BUILDERS = {"busybox": busybox.build, "debian": debian.build}


def image_id_for(digest: str, tag: str | None = None) -> str:
    """A stable ``ami-`` id for a manifest (and a tag of it): the same image gets the same id
    on every host."""
    key = f"corral-image:{digest}" + (f":{tag}" if tag else "")
    return "ami-" + hashlib.sha256(key.encode()).hexdigest()[:17]


class Images:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("image-build", self._build)
        self.transfer = ImageTransfer(self)

    @staticmethod
    def thread_progress(ctx: Any) -> Callable[[float, str], None]:
        """A progress callback for work in a thread, reporting to the operation."""
        loop = asyncio.get_running_loop()

        def progress(fraction: float, message: str) -> None:
            asyncio.run_coroutine_threadsafe(ctx.progress(fraction, message), loop)

        return progress

    async def resolve(self, s: AsyncSession, caller: Caller, ref: str) -> Image:
        """By id, ``name`` (newest version) or ``name:version``; own or public images."""
        visible = self.ctrl.image_publishing.visible(caller)  # public, own, shared
        q = select(Image).where(visible, Image.state != "deregistered")
        if ids.is_id("image", ref):
            q = q.where(Image.id == ref)
        elif ":" in ref:
            name, version = ref.split(":", 1)
            q = q.where(Image.name == name, Image.version == version)
        else:
            q = q.where(Image.name == ref)
        row = (await s.scalars(q.order_by(Image.created_at.desc()))).first()
        if row is None:
            raise NotFound(
                f"image {ref} does not exist; `corral image ls` lists the images, "
                "`corral image build tiny` builds the built-in one",
                field="image",
                resource="image",
            )
        return row

    async def get(self, caller: Caller, ref: str) -> Image:
        async with self.ctrl.store.read() as s:
            return await self.resolve(s, caller, ref)

    async def list(self, caller: Caller) -> builtins.list[Image]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(Image)
                    .where(
                        self.ctrl.image_publishing.visible(caller), Image.state != "deregistered"
                    )
                    .order_by(Image.name, Image.created_at)
                )
            )

    async def register(
        self, manifest: Manifest, account_id: str | None = None, public: bool = True
    ) -> Image:
        """The record for a manifest in the image store (idempotent)."""
        iid = image_id_for(manifest.digest)
        async with self.ctrl.store.write() as s:
            row = await s.get(Image, iid)
            if row is None:
                same = await s.scalar(
                    select(Image).where(
                        Image.account_id.is_(account_id)
                        if account_id is None
                        else Image.account_id == account_id,
                        Image.name == manifest.name,
                        Image.version == manifest.version,
                    )
                )
                version = manifest.version
                if same is not None:
                    # the same name and version with other content: a rebuild; keep both
                    version = f"{manifest.version}-{manifest.digest[:8]}"
                row = Image(
                    id=iid,
                    account_id=account_id,
                    name=manifest.name,
                    version=version,
                    digest=manifest.digest,
                    state="available",
                    public=public,
                    arch=manifest.arch,
                    kind=manifest.kind,
                    description=manifest.description,
                    default_user=manifest.default_user,
                    size=manifest.size,
                    virtual_size=manifest.root_disk.virtual_size or 0,
                    created_at=utcnow(),
                )
                s.add(row)
            elif row.state == "deregistered":
                row.state = "available"
        return row

    async def sync_from_store(self) -> builtins.list[Image]:
        """At start: drop what a crash left half-written in the image store, then make sure
        every built-in image in it has a record (bases before the images built on them); images
        accounts made keep their own records."""
        store = self.ctrl.image_store
        removed = await asyncio.to_thread(store.gc)
        if removed:
            log.info("image store: removed %d leftovers of interrupted work", len(removed))
        async with self.ctrl.store.read() as s:
            owned = set(await s.scalars(select(Image.digest).where(Image.account_id.is_not(None))))
        manifests = [m for m in await asyncio.to_thread(store.list) if m.digest not in owned]
        manifests.sort(key=lambda m: m.base is not None)
        return [await self.register(m) for m in manifests]

    async def manifest(self, caller: Caller, ref: str) -> Manifest:
        row = await self.get(caller, ref)
        return await asyncio.to_thread(self.ctrl.image_store.get_manifest, row.digest)

    async def base_of(self, rows: builtins.list[Image]) -> dict[str, str | None]:
        """Image id -> the digest of the image it is built on (from the manifests)."""
        store = self.ctrl.image_store
        out: dict[str, str | None] = {}
        for r in rows:
            try:
                out[r.id] = (await asyncio.to_thread(store.get_manifest, r.digest)).base
            except NotFound:
                out[r.id] = None
        return out

    async def tag(self, caller: Caller, ref: str, name: str, version: str) -> Image:
        """Another name:version for an image (the same content, another record)."""
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            taken = await s.scalar(
                select(Image).where(
                    Image.name == name,
                    Image.version == version,
                    Image.state != "deregistered",
                    or_(Image.account_id.is_(None), Image.account_id == caller.account_id),
                )
            )
            if taken is not None:
                if taken.digest == row.digest:
                    return taken
                raise Exists(
                    f"image {name}:{version} exists ({taken.id}, another image); "
                    "choose another version or remove it first",
                    field="version",
                    resource="image",
                )
            iid = image_id_for(row.digest, f"{name}:{version}")
            old = await s.get(Image, iid)
            if old is not None:  # tagged before, then removed: bring the record back
                old.state = "available"
                return old
            tagged = Image(
                id=iid,
                account_id=row.account_id,
                name=name,
                version=version,
                digest=row.digest,
                state="available",
                public=row.public,
                arch=row.arch,
                kind=row.kind,
                description=row.description,
                default_user=row.default_user,
                size=row.size,
                virtual_size=row.virtual_size,
                created_at=utcnow(),
            )
            s.add(tagged)
        return tagged

    async def build(self, caller: Caller, recipe_ref: str, force: bool = False) -> Operation:
        r = recipe.load(recipe_ref)  # raises NotFound/Invalid before anything starts
        if r.kind not in BUILDERS:
            raise Invalid(
                f"recipe {r.name} is of kind {r.kind}; this Corral builds {', '.join(BUILDERS)}",
                field="recipe",
            )
        base = None
        if r.base:
            async with self.ctrl.store.read() as s:
                try:
                    base = (await self.resolve(s, caller, r.base)).digest
                except NotFound as err:
                    raise NotFound(
                        f"recipe {r.name} is built on {r.base}, which is not in the "
                        f"image store; build or import {r.base} first",
                        field="base",
                        resource="image",
                    ) from err
        return await self.ctrl.ops.submit(
            "image-build",
            account_id=caller.account_id,
            target_kind="image",
            target_id=r.name,
            params={"recipe": str(r.directory), "force": force, "base": base},
            requested_by=caller.access_key_id,
        )

    async def _build(self, ctx: Any) -> dict[str, Any]:
        r = recipe.load(ctx.params["recipe"])
        progress = self.thread_progress(ctx)
        digest = await asyncio.to_thread(
            BUILDERS[r.kind],
            r,
            self.ctrl.image_store,
            self.ctrl.settings.cache_dir,
            progress,
            bool(ctx.params.get("force")),
            ctx.params.get("base"),
        )
        manifest = self.ctrl.image_store.get_manifest(digest)
        row = await self.register(manifest)
        return {"image_id": row.id, "digest": digest, "name": row.name, "version": row.version}

    async def remove(self, caller: Caller, ref: str) -> Image:
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            if row.account_id is not None and row.account_id != caller.account_id:
                raise NotFound(f"image {ref} does not exist", resource="image")
            if row.account_id is None and not caller.admin:
                raise WrongState(
                    f"image {row.name} is a built-in image; only an admin may remove it",
                    resource="image",
                )
            users = list(
                await s.scalars(
                    select(Instance.name).where(
                        Instance.image_id == row.id, Instance.state != "terminated"
                    )
                )
            )
            if users:
                raise WrongState(
                    f"image {row.name} is used by {', '.join(sorted(users))}; terminate them first",
                    resource="image",
                )
            others = await s.scalar(
                select(Image.id).where(
                    Image.digest == row.digest, Image.id != row.id, Image.state != "deregistered"
                )
            )
            if not others:
                built_on = await asyncio.to_thread(self.ctrl.image_store.dependents, row.digest)
                if built_on:
                    names = ", ".join(sorted(f"{m.name}:{m.version}" for m in built_on))
                    raise WrongState(
                        f"image {row.name}:{row.version} is the base of {names} "
                        "(its disk is their backing file); remove those first",
                        resource="image",
                    )
            row.state = "deregistered"
            digest = row.digest
            others = await s.scalar(
                select(Image.id).where(
                    Image.digest == digest, Image.id != row.id, Image.state != "deregistered"
                )
            )
        if not others:
            await asyncio.to_thread(self.ctrl.image_store.remove, digest)
        return row
