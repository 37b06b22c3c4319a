"""Images as the store knows them: records for what the node image stores hold, lookups by
name or id, builds from recipes (as operations), tags, removal (refused while in use or while
another image is built on it). Import, export and verify are in image_transfer.py."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import filemodes, ids
from corral.controller.accounts import Caller
from corral.controller.image_transfer import ImageTransfer
from corral.errors import Exists, Forbidden, Invalid, NotFound, WrongState
from corral.images import busybox, debian, fields, recipe, recipe_upload
from corral.images.manifest import Manifest
from corral.store.models import Image, Instance, Operation, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)
BUILDERS = {"busybox": busybox.build, "debian": debian.build}


def image_id_for(digest: str, tag: str | None = None, account_id: str | None = None) -> str:
    """A stable ``ami-`` id for a manifest (and a tag of it, and the account that owns the
    record): the same built-in image gets the same id on every host, and two accounts that
    import the same content get records of their own."""
    key = f"corral-image:{digest}" + (f":{tag}" if tag else "")
    key += f"@{account_id}" if account_id else ""
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
        """By id (own, public or shared with the caller), or by ``name`` (newest version) or
        ``name:version`` among the caller's own images first, then public ones. A name never
        reaches another account's private image, even one shared with the caller: an account
        cannot plant an image under a name another account launches by."""
        q = select(Image).where(Image.state != "deregistered")
        if ids.is_id("image", ref):
            q = q.where(Image.id == ref, self.ctrl.image_publishing.visible(caller))
        else:
            name, version = ref.split(":", 1) if ":" in ref else (ref, None)
            q = q.where(Image.name == name, self.ctrl.image_publishing.by_name(caller))
            if version is not None:
                q = q.where(Image.version == version)
        mine = case((Image.account_id == caller.account_id, 0), else_=1)
        row = (await s.scalars(q.order_by(mine, Image.created_at.desc()))).first()
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

    async def register(self, manifest: Manifest, account_id: str | None = None) -> Image:
        """The record for a manifest in the image store (idempotent). With ``account_id`` the
        image belongs to that account and is private (shared through launch permissions);
        without, it is a public built-in image (only an admin's build of a built-in recipe)."""
        iid = image_id_for(manifest.digest, account_id=account_id)
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
                    public=account_id is None,
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
        accounts made keep their own records. A manifest no record claims (a fresh database,
        or a crash between a build and its record) is public only when it is a built-in
        recipe's; anything else is kept for the admin, private, to publish or remove."""
        store = self.ctrl.image_store
        removed = await asyncio.to_thread(store.gc)
        if removed:
            log.info("image store: removed %d leftovers of interrupted work", len(removed))
        async with self.ctrl.store.read() as s:
            owned = set(await s.scalars(select(Image.digest).where(Image.account_id.is_not(None))))
            known = set(await s.scalars(select(Image.id).where(Image.account_id.is_(None))))
        manifests = [m for m in await asyncio.to_thread(store.list) if m.digest not in owned]
        manifests.sort(key=lambda m: m.base is not None)
        builtin = set(recipe.builtin_names())
        rows = []
        for m in manifests:
            row = await self.register(m)
            if row.id not in known and (m.name not in builtin or m.kind not in BUILDERS):
                async with self.ctrl.store.write() as s:
                    kept = await s.get(Image, row.id)
                    if kept is not None:
                        kept.public = False
                        row = kept
            rows.append(row)
        return rows

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
        """Another name:version for an image (the same content, another record). The new record
        is the caller's own and private; an admin's tag of a built-in image is built-in."""
        fields.check_name(name)
        fields.check_version(version)
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            builtin = row.account_id is None and caller.admin
            owner = None if builtin else caller.account_id
            taken = await s.scalar(
                select(Image).where(
                    Image.name == name,
                    Image.version == version,
                    Image.state != "deregistered",
                    Image.account_id.is_(None) if owner is None else Image.account_id == owner,
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
            iid = image_id_for(row.digest, f"{name}:{version}", owner)
            old = await s.get(Image, iid)
            if old is not None:  # tagged before, then removed: bring the record back
                old.state = "available"
                return old
            tagged = Image(
                id=iid,
                account_id=owner,
                name=name,
                version=version,
                digest=row.digest,
                state="available",
                public=row.public if builtin else False,
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

    async def build(
        self,
        caller: Caller,
        recipe_name: str | None = None,
        archive: str | None = None,
        force: bool = False,
    ) -> Operation:
        """Build a built-in recipe (by name) or an uploaded one (its directory packed by
        recipe_upload.pack); never a path on the server. An admin's build of a built-in recipe
        is a public built-in image; everything else belongs to the caller, private."""
        if (recipe_name is None) == (archive is None):
            raise Invalid(
                "give recipe (a built-in recipe's name: "
                f"{', '.join(recipe.builtin_names())}) or archive (an uploaded recipe)",
                field="recipe",
            )
        directory = None
        if recipe_name is not None:
            if recipe_name not in recipe.builtin_names():
                raise NotFound(
                    f"no built-in recipe {recipe_name!r} (there are "
                    f"{', '.join(recipe.builtin_names())}); to build your own, "
                    "`corral image build DIR` uploads the recipe directory",
                    field="recipe",
                    resource="recipe",
                )
            r = recipe.load(recipe_name)
        else:
            assert archive is not None
            directory = self.ctrl.settings.state_dir / "recipes" / ids.new_id("operation")
            try:
                await asyncio.to_thread(recipe_upload.unpack, archive, directory)
                r = recipe.load(directory)
                self._check_uploaded(caller, r)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, directory, True)
                raise
        try:
            if r.kind not in BUILDERS:
                raise Invalid(
                    f"recipe {r.name} is of kind {r.kind}; this Corral builds "
                    f"{', '.join(BUILDERS)}",
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
            builtin = caller.admin and recipe_name is not None
            return await self.ctrl.ops.submit(
                "image-build",
                account_id=caller.account_id,
                target_kind="image",
                target_id=r.name,
                params={
                    "recipe": str(r.directory),
                    "uploaded": directory is not None,
                    "owner": None if builtin else caller.account_id,
                    "force": force,
                    "base": base,
                },
                requested_by=caller.access_key_id,
            )
        except BaseException:
            if directory is not None:
                await asyncio.to_thread(shutil.rmtree, directory, True)
            raise

    @staticmethod
    def _check_uploaded(caller: Caller, r: recipe.Recipe) -> None:
        if r.name in recipe.builtin_names():
            raise Invalid(
                f"recipe name {r.name} is a built-in recipe's; give your recipe another name",
                field="name",
            )
        if (r.mirror or r.security_mirror) and not caller.admin:
            raise Forbidden(
                "only an admin may point a build at another apt mirror; leave mirror and "
                "security_mirror out (the host's mirror is used)",
                field="mirror",
            )

    async def _build(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        try:
            r = recipe.load(p["recipe"])
            progress = self.thread_progress(ctx)
            # the image's own files get the modes a guest expects, not the daemon's 077
            digest = await filemodes.to_thread_with_umask(
                0o022,
                BUILDERS[r.kind],
                r,
                self.ctrl.image_store,
                self.ctrl.settings.cache_dir,
                progress,
                bool(p.get("force")),
                p.get("base"),
            )
        finally:
            if p.get("uploaded"):
                await asyncio.to_thread(shutil.rmtree, p["recipe"], True)
        manifest = self.ctrl.image_store.get_manifest(digest)
        # operations from before images had owners: the account that asked owns the image
        row = await self.register(manifest, p.get("owner", ctx.account_id))
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
                await s.execute(
                    select(Instance.account_id, Instance.name).where(
                        Instance.image_id == row.id, Instance.state != "terminated"
                    )
                )
            )
            if users:
                # other accounts' instances are counted, never named
                mine = sorted(n for a, n in users if a == caller.account_id)
                others = len(users) - len(mine)
                used_by = mine + ([f"{others} instance(s) of other accounts"] if others else [])
                raise WrongState(
                    f"image {row.name} is used by {', '.join(used_by)}; "
                    + ("terminate them first" if not others else "it stays while they run"),
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
