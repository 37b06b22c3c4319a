"""Images: list, show, build from a recipe, import (a streamed upload), export (made by an
operation, then downloaded as a stream), verify, tag, remove."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from corral import models, xmltext
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import Invalid
from corral.images.manifest import Manifest
from corral.store.models import Image

router = APIRouter(prefix="/v1/images", tags=["images"], responses=RESPONSES)

BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def _views(ctx: ApiContext, rows: list[Image]) -> list[models.Image]:
    bases = await ctx.controller.images.base_of(rows)
    return [views.image(r).model_copy(update={"base": bases.get(r.id)}) for r in rows]


@router.get("", response_model=list[models.Image])
async def image_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.Image]:
    return await _views(ctx, await ctx.controller.images.list(who))


@router.post("/build", status_code=202, response_model=models.ImageAccepted)
async def image_build(
    req: models.ImageBuild, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.ImageAccepted:
    """Build a built-in recipe by name, or an uploaded recipe directory (``archive``)."""
    op = await ctx.controller.images.build(who, req.recipe, req.archive, req.force)
    return models.ImageAccepted(operation=views.operation(op))


@router.post(
    "/import", status_code=202, response_model=models.ImageAccepted, openapi_extra=BINARY_BODY
)
async def image_import(
    request: Request,
    name: str | None = Query(None, description="image name (disk files; archives carry theirs)"),
    version: str | None = Query(None, description="image version (default 1)"),
    format: str | None = Query(
        None,
        pattern="^(qcow2|raw)$",
        description="disk file format; found from the file when left out",
    ),
    description: str = Query(""),
    default_user: str = Query("root", description="the user `corral ssh` logs in as"),
    min_disk: str | None = Query(None, description="smallest root disk, e.g. 2G"),
    boot_from: str | None = Query(
        None, description="boot with this image's kernel, initramfs and command line"
    ),
    cmdline: str | None = Query(None, description="kernel command line (with boot_from)"),
    sha256: str | None = Query(
        None, pattern="^[0-9a-fA-F]{64}$", description="the file's sha256: refused when it differs"
    ),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.ImageAccepted:
    """Import a qcow2 or raw disk file, or an archive from `corral image export`, sent as the
    request body (streamed to disk, never held in memory)."""
    length = request.headers.get("content-length")
    size = int(length) if length and length.isdigit() else None
    if cmdline is not None and boot_from is None:
        raise Invalid(
            "cmdline needs boot_from (the image whose kernel boots the disk)", field="cmdline"
        )
    texts = {"name": name, "version": version, "description": description}
    texts |= {"default_user": default_user, "boot_from": boot_from, "cmdline": cmdline}
    for field, text in texts.items():
        if text is not None:
            xmltext.check(field, text)  # checked before the upload is read
    transfer = ctx.controller.images.transfer
    params = {
        "name": name,
        "version": version,
        "format": format,
        "description": description,
        "default_user": default_user,
        "min_disk": min_disk,
        "boot_from": boot_from,
        "cmdline": cmdline,
    }
    transfer.check_fields(params)  # before a byte is received
    upload = await transfer.receive(request.stream(), size, sha256)
    op = await transfer.import_(who, upload, params)
    return models.ImageAccepted(operation=views.operation(op))


@router.get(
    "/exports/{archive}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/x-tar": {}},
            "description": "the archive; X-Corral-SHA256 is its sha256",
        }
    },
)
async def image_export_download(
    archive: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> FileResponse:
    """Download an archive made by POST /v1/images/{ref}/export (streamed)."""
    path, sha = await ctx.controller.images.transfer.export_file(who, archive)
    return FileResponse(
        path, media_type="application/x-tar", filename=archive, headers={"X-Corral-SHA256": sha}
    )


@router.get("/{ref}", response_model=models.Image)
async def image_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Image:
    return (await _views(ctx, [await ctx.controller.images.get(who, ref)]))[0]


@router.get("/{ref}/manifest", response_model=Manifest)
async def image_manifest(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Manifest:
    """The image's manifest: its parts by sha256, kernel command line, base, packages."""
    return await ctx.controller.images.manifest(who, ref)


@router.post("/{ref}/export", status_code=202, response_model=models.ImageAccepted)
async def image_export(
    ref: str,
    req: models.ImageExport,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.ImageAccepted:
    """Make an export archive; the operation's result names it for GET /v1/images/exports."""
    op = await ctx.controller.images.transfer.export(who, ref, req.delta_from)
    return models.ImageAccepted(operation=views.operation(op))


@router.post("/{ref}/verify", status_code=202, response_model=models.ImageAccepted)
async def image_verify(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.ImageAccepted:
    """Check the sha256 of every part of the image and of the images it is built on."""
    op = await ctx.controller.images.transfer.verify(who, ref)
    return models.ImageAccepted(operation=views.operation(op))


@router.post("/{ref}/tags", status_code=201, response_model=models.Image)
async def image_tag(
    ref: str,
    req: models.ImageTag,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Image:
    """Give the image another name:version."""
    row = await ctx.controller.images.tag(who, ref, req.name, req.version)
    return (await _views(ctx, [row]))[0]


@router.get("/{ref}/permissions", response_model=models.ImagePermissions)
async def image_permissions_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.ImagePermissions:
    """Who may launch the image (its owner only may ask): the EC2 launch permissions."""
    row = await ctx.controller.images.get(who, ref)
    public, accounts = await ctx.controller.image_publishing.launch_permissions(who, row.id)
    return models.ImagePermissions(public=public, accounts=accounts)


@router.patch("/{ref}/permissions", response_model=models.ImagePermissions)
async def image_permissions_update(
    ref: str,
    req: models.ImagePermissionsChange,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.ImagePermissions:
    """Share the image with accounts, stop sharing it, or (an admin) make it public; the
    same controller path as EC2's ModifyImageAttribute."""
    pub = ctx.controller.image_publishing
    row = await ctx.controller.images.get(who, ref)
    await pub.modify_launch_permissions(who, row.id, req.add, req.remove, req.public)
    public, accounts = await pub.launch_permissions(who, row.id)
    return models.ImagePermissions(public=public, accounts=accounts)


@router.delete("/{ref}", response_model=models.Image)
async def image_remove(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Image:
    return views.image(await ctx.controller.images.remove(who, ref))
