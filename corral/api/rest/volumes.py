"""Volumes and snapshots: create (empty, formatted, or restored from a snapshot), list, show,
rename, remove, attach and detach (hot-plugged when the instance runs), snapshot (while the
instance runs, too), restore."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from corral import models
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import Invalid
from corral.store.models import Operation, Volume
from corral.units import parse_size

router = APIRouter(prefix="/v1/volumes", tags=["volumes"], responses=RESPONSES)
snapshots = APIRouter(prefix="/v1/snapshots", tags=["volumes"], responses=RESPONSES)


@router.get("", response_model=list[models.Volume])
async def volume_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.Volume]:
    return await _views(ctx, who, await ctx.controller.volumes.list(who))


@router.post("", status_code=202, response_model=models.VolumeAccepted)
async def volume_create(
    req: models.VolumeCreate, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.VolumeAccepted:
    """A new volume: empty, formatted (``fs``), or restored from ``snapshot``."""
    size = gib(req.size) if req.size is not None else None
    row, op = await ctx.controller.volumes.create(
        who,
        size,
        req.snapshot,
        volume_type=req.volume_type,
        name=req.name,
        fs=req.fs,
        iops=req.iops,
        throughput=req.throughput,
    )
    return await _accepted(ctx, who, row, op)


@router.get("/{ref}", response_model=models.Volume)
async def volume_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Volume:
    return (await _views(ctx, who, [await ctx.controller.volumes.get(who, ref)]))[0]


@router.patch("/{ref}", response_model=models.Volume)
async def volume_update(
    ref: str,
    req: models.VolumeUpdate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Volume:
    row = await ctx.controller.volumes.update(who, ref, req.name, req.delete_on_termination)
    return (await _views(ctx, who, [row]))[0]


@router.delete("/{ref}", status_code=202, response_model=models.VolumeAccepted)
async def volume_remove(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.VolumeAccepted:
    """Delete a volume (refused while it is attached)."""
    row = await ctx.controller.volumes.get(who, ref)
    op = await ctx.controller.volumes.delete(who, row.id)
    return await _accepted(ctx, who, await ctx.controller.volumes.get(who, row.id), op)


@router.post("/{ref}/attach", status_code=202, response_model=models.VolumeAccepted)
async def volume_attach(
    ref: str,
    req: models.VolumeAttach,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.VolumeAccepted:
    """Attach to an instance: plugged in at once when it runs (an operation), else at its
    next start. 409 when the volume is attached elsewhere."""
    row, op = await ctx.controller.volumes.attach(
        who, ref, req.instance, req.device, delete_on_termination=req.delete_on_termination
    )
    return await _accepted(ctx, who, row, op)


@router.post("/{ref}/detach", status_code=202, response_model=models.VolumeAccepted)
async def volume_detach(
    ref: str,
    req: models.VolumeDetach | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.VolumeAccepted:
    """Detach: from a running instance the guest is asked to release the disk (an operation
    that fails, leaving the volume attached, when the guest holds on; ``force`` restarts the
    instance without it)."""
    req = req or models.VolumeDetach()
    row = await ctx.controller.volumes.get(who, ref)
    _, op = await ctx.controller.volumes.detach(who, row.id, force=req.force, timeout=req.timeout)
    return await _accepted(ctx, who, await ctx.controller.volumes.get(who, row.id), op)


@router.post("/{ref}/snapshots", status_code=202, response_model=models.SnapshotAccepted)
async def volume_snapshot(
    ref: str,
    req: models.SnapshotCreate | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.SnapshotAccepted:
    """A point-in-time copy, also of a volume in a running instance (QEMU copies it while the
    guest writes)."""
    req = req or models.SnapshotCreate()
    row, op = await ctx.controller.snapshots.create(who, ref, req.description)
    return models.SnapshotAccepted(operation=views.operation(op), snapshot=views.snapshot(row))


@snapshots.get("", response_model=list[models.Snapshot])
async def snapshot_list(
    volume: str | None = Query(None, description="only this volume's"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> list[models.Snapshot]:
    vid = (await ctx.controller.volumes.get(who, volume)).id if volume else None
    return [views.snapshot(r) for r in await ctx.controller.snapshots.list(who, vid)]


@snapshots.get("/{sid}", response_model=models.Snapshot)
async def snapshot_show(
    sid: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Snapshot:
    return views.snapshot(await ctx.controller.snapshots.get(who, sid))


@snapshots.delete("/{sid}", status_code=202, response_model=models.Operation)
async def snapshot_remove(
    sid: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Operation:
    return views.operation(await ctx.controller.snapshots.delete(who, sid))


@snapshots.post("/{sid}/restore", status_code=202, response_model=models.VolumeAccepted)
async def volume_restore(
    sid: str,
    req: models.VolumeRestore | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.VolumeAccepted:
    """A new volume holding the snapshot's content."""
    req = req or models.VolumeRestore()
    size = gib(req.size) if req.size is not None else None
    row, op = await ctx.controller.snapshots.restore(who, sid, size, req.name)
    return await _accepted(ctx, who, row, op)


def gib(value: str | int) -> int:
    """Whole GiB from ``1G``, ``10G``, ``1024M`` or a number of GiB."""
    size = parse_size(value, field="size", default_unit="G")
    if size <= 0 or size % (1 << 30):
        raise Invalid(
            f"size {value!r}: volumes come in whole GiB; give e.g. 1G or 10G", field="size"
        )
    return size >> 30


async def _views(ctx: ApiContext, who: Caller, rows: list[Volume]) -> list[models.Volume]:
    names = await ctx.controller.volumes.names(who.account_id, [r.id for r in rows])
    insts = {i.id: i.name for i in await ctx.controller.instances.list(who)}
    return [views.volume(r, names.get(r.id), insts.get(r.instance_id or "", "")) for r in rows]


async def _accepted(
    ctx: ApiContext, who: Caller, row: Volume, op: Operation | None
) -> models.VolumeAccepted:
    return models.VolumeAccepted(
        operation=views.operation(op) if op is not None else None,
        volume=(await _views(ctx, who, [row]))[0],
    )
