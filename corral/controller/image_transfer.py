"""Moving images in and out of the store, as operations: import (an uploaded disk file or
export archive), export (a whole image or a delta against its base, to download), verify.

Uploads are streamed to a file in the store's staging directory (never held in memory), hashed
on the way, and handed to an ``image-import`` operation; the file goes away when it ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from corral.controller.accounts import Caller
from corral.errors import Exists, Invalid, NotFound
from corral.fsutil import atomic_write
from corral.images import archive, fields, imports
from corral.images.manifest import Manifest
from corral.images.space import is_no_space, no_space
from corral.images.store import ImageStore
from corral.store.models import Account, Image, Operation
from corral.units import parse_size

if TYPE_CHECKING:
    from corral.controller.images import Images

WRITE_BATCH = 4 << 20


class ImageTransfer:
    def __init__(self, images: Images) -> None:
        self.images = images
        self.ctrl = images.ctrl
        ops = self.ctrl.ops
        ops.register("image-import", self._import)
        ops.register("image-export", self._export)
        ops.register("image-verify", self._verify)

    @property
    def store(self) -> ImageStore:
        return self.ctrl.image_store

    # -- uploads -------------------------------------------------------------------------
    async def receive(
        self, chunks: AsyncIterator[bytes], size: int | None, sha256: str | None
    ) -> Path:
        """Write an upload to a staging file and return it; checks length and sha256."""
        store = self.store
        await asyncio.to_thread(store.ensure)
        if size is not None and shutil.disk_usage(store.tmp).free < size + (16 << 20):
            raise no_space(store.root, "receiving the upload", size + (16 << 20))
        fd, name = tempfile.mkstemp(prefix="upload-", dir=store.tmp)
        path = Path(name)
        h = hashlib.sha256()
        total = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                buf = bytearray()
                async for chunk in chunks:
                    h.update(chunk)
                    total += len(chunk)
                    buf += chunk
                    if len(buf) >= WRITE_BATCH:
                        await asyncio.to_thread(fh.write, bytes(buf))
                        buf.clear()
                await asyncio.to_thread(fh.write, bytes(buf))
            if size is not None and total != size:
                raise Invalid(
                    f"the upload ended after {total} of {size} bytes; send it again", field="file"
                )
            if sha256 is not None and h.hexdigest() != sha256.lower():
                raise Invalid(
                    f"the upload's sha256 is {h.hexdigest()}, not {sha256}: the file "
                    "is corrupt or not the one meant; nothing was imported",
                    field="sha256",
                )
            if total == 0:
                raise Invalid(
                    "the upload is empty; send a disk file or an export archive", field="file"
                )
        except OSError as err:
            path.unlink(missing_ok=True)
            if is_no_space(err):
                raise no_space(store.root, "receiving the upload") from err
            raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # -- import --------------------------------------------------------------------------
    async def import_(self, caller: Caller, upload: Path, params: dict[str, Any]) -> Operation:
        """Submit the import of an uploaded file; ``params`` are ImportParams' fields."""
        try:
            is_archive = await asyncio.to_thread(archive.is_archive, upload)
            if not is_archive:
                params = await self._check_disk_params(caller, params)
            return await self.ctrl.ops.submit(
                "image-import",
                account_id=caller.account_id,
                target_kind="image",
                target_id=params.get("name") or upload.name,
                params={**params, "upload": str(upload), "archive": is_archive},
                requested_by=caller.access_key_id,
            )
        except BaseException:
            upload.unlink(missing_ok=True)
            raise

    @staticmethod
    def check_fields(params: dict[str, Any]) -> None:
        """The image fields of an import, checked before anything is received."""
        if params.get("name") is not None:
            fields.check_name(params["name"])
        if params.get("version") is not None:
            fields.check_version(params["version"])
        fields.check_description(params.get("description") or "")
        fields.check_default_user(params.get("default_user") or "root")
        if params.get("cmdline") is not None:
            fields.check_description(params["cmdline"], field="cmdline")

    async def _check_disk_params(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        name, version = params.get("name"), params.get("version") or "1"
        if not name:
            raise Invalid("name is required to import a disk file (e.g. --name web)", field="name")
        self.check_fields(params)
        out = dict(params, version=version)
        async with self.ctrl.store.read() as s:
            try:
                row = await self.images.resolve(s, caller, f"{name}:{version}")
            except NotFound:
                row = None
            if row is not None:
                raise Exists(
                    f"image {name}:{version} exists ({row.id}); give another "
                    "--version or remove it first",
                    field="version",
                    resource="image",
                )
            if params.get("boot_from"):
                out["boot_from"] = (
                    await self.images.resolve(s, caller, params["boot_from"])
                ).digest
        if params.get("min_disk"):
            out["min_disk"] = parse_size(params["min_disk"], field="min_disk")
        return out

    async def _import(self, ctx: Any) -> dict[str, Any]:
        upload = Path(ctx.params["upload"])
        if not upload.exists():
            raise NotFound(
                "the uploaded file is gone (Corral restarted during the import); import it again",
                field="file",
                resource="image",
            )
        progress = self.images.thread_progress(ctx)
        try:
            if ctx.params.get("archive"):
                index = await asyncio.to_thread(
                    archive.import_archive, self.store, upload, progress
                )
                last = len(index.manifests) - 1
                rows = [
                    await self._register(ctx, self.store.get_manifest(d), base=i < last)
                    for i, d in enumerate(index.manifests)
                ]
                row = rows[-1]
            else:
                p = ctx.params
                req = imports.DiskImport(
                    name=p["name"],
                    version=p.get("version") or "1",
                    format=p.get("format"),
                    description=p.get("description") or "",
                    default_user=p.get("default_user") or "root",
                    min_disk=int(p.get("min_disk") or 0),
                    boot_from=p.get("boot_from"),
                    cmdline=p.get("cmdline"),
                )
                digest = await asyncio.to_thread(
                    imports.import_disk, self.store, upload, req, progress
                )
                row = await self._register(ctx, self.store.get_manifest(digest))
        finally:
            upload.unlink(missing_ok=True)
        return {"image_id": row.id, "digest": row.digest, "name": row.name, "version": row.version}

    async def _register(self, ctx: Any, manifest: Manifest, base: bool = False) -> Image:
        """An imported image belongs to the account that imported it, private (an admin's
        too: an admin publishes it through its launch permissions). A base carried in an
        archive that the account can already launch keeps the record it has."""
        account = ctx.account_id
        if base and account is not None:
            async with self.ctrl.store.read() as s:
                acct = await s.get(Account, account)
                caller = Caller(account, acct.name if acct else "", bool(acct and acct.admin), "")
                known = await s.scalar(
                    select(Image).where(
                        Image.digest == manifest.digest,
                        Image.state != "deregistered",
                        self.ctrl.image_publishing.visible(caller),
                    )
                )
            if known is not None:
                return known
        return await self.images.register(manifest, account)

    # -- export --------------------------------------------------------------------------
    def export_path(self, digest: str, delta_from: str | None) -> Path:
        name = f"{digest}-from-{delta_from}.tar" if delta_from else f"{digest}.tar"
        return self.store.exports / name

    async def export(self, caller: Caller, ref: str, delta_from: str | None) -> Operation:
        async with self.ctrl.store.read() as s:
            row = await self.images.resolve(s, caller, ref)
            base = None
            if delta_from:
                try:
                    base = (await self.images.resolve(s, caller, delta_from)).digest
                except NotFound as err:
                    raise NotFound(
                        f"--delta-from {delta_from}: no such image",
                        field="delta_from",
                        resource="image",
                    ) from err
        # refused at once when the base is not this image's base (nothing is written)
        await asyncio.to_thread(archive.plan, self.store, row.digest, base)
        return await self.ctrl.ops.submit(
            "image-export",
            account_id=caller.account_id,
            target_kind="image",
            target_id=row.id,
            params={"digest": row.digest, "delta_from": base},
            requested_by=caller.access_key_id,
        )

    async def _export(self, ctx: Any) -> dict[str, Any]:
        digest, base = ctx.params["digest"], ctx.params.get("delta_from")
        out = self.export_path(digest, base)
        sidecar = out.with_name(out.name + ".sha256")
        if not (out.exists() and sidecar.exists()):
            await asyncio.to_thread(self.store.ensure)
            await asyncio.to_thread(
                archive.export, self.store, digest, out, base, self.images.thread_progress(ctx)
            )
            sha = await asyncio.to_thread(archive.archive_sha256, out)
            await asyncio.to_thread(atomic_write, sidecar, sha + "\n")
        sha = sidecar.read_text().strip()
        return {
            "archive": out.name,
            "size": out.stat().st_size,
            "sha256": sha,
            "digest": digest,
            "delta_from": base,
        }

    async def export_file(self, caller: Caller, name: str) -> tuple[Path, str]:
        """The archive ``name`` (made by an export) if the caller may see its image."""
        digest = name.split("-from-")[0].removesuffix(".tar")
        path = self.store.exports / name
        if "/" in name or not name.endswith(".tar") or not path.exists():
            raise NotFound(
                f"export {name} does not exist; `corral image export` makes it",
                field="archive",
                resource="image",
            )
        visible = [r for r in await self.images.list(caller) if r.digest == digest]
        if not visible:
            raise NotFound(f"export {name} does not exist", field="archive", resource="image")
        sidecar = path.with_name(name + ".sha256")
        return path, sidecar.read_text().strip() if sidecar.exists() else ""

    # -- verify --------------------------------------------------------------------------
    async def verify(self, caller: Caller, ref: str) -> Operation:
        row: Image = await self.images.get(caller, ref)
        return await self.ctrl.ops.submit(
            "image-verify",
            account_id=caller.account_id,
            target_kind="image",
            target_id=row.id,
            params={"digest": row.digest},
            requested_by=caller.access_key_id,
        )

    async def _verify(self, ctx: Any) -> dict[str, Any]:
        digest = ctx.params["digest"]
        chain = await asyncio.to_thread(self.store.chain, digest)
        await asyncio.to_thread(self.store.verify, digest, self.images.thread_progress(ctx))
        blobs = {b.sha256: b.size for m in chain for b in m.blobs()}
        return {
            "digest": digest,
            "images": len(chain),
            "parts": len(blobs),
            "bytes": sum(blobs.values()),
            "ok": True,
        }
