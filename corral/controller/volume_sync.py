"""Keeping volume records true to what running VMs hold, as part of each reconcile pass.

A guest decides when a hot-unplug happens: one that was paused, busy or still booting when
Corral asked may let go of the disk long after the detach operation gave up and left the volume
attached. And a disk plugged into a VM that the store gives to no one (an interrupted operation
from an older record) must not stay there, or two VMs could write to it. Level-triggered and
idempotent, like the rest of the reconciler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from corral.controller.volumes import ROOT_DEVICE
from corral.errors import CorralError
from corral.store.models import Instance, Volume

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

UNPLUG_TIMEOUT = 2.0


async def attached_on(ctrl: Controller, instance_ids: list[str]) -> dict[str, list[Volume]]:
    """The data volumes the store gives to each of these instances, in one read (a reconcile
    pass asks for a whole node's at once)."""
    out: dict[str, list[Volume]] = {iid: [] for iid in instance_ids}
    if not instance_ids:
        return out
    async with ctrl.store.read() as s:
        for row in await s.scalars(
            select(Volume).where(Volume.instance_id.in_(instance_ids), Volume.device != ROOT_DEVICE)
        ):
            out.setdefault(row.instance_id or "", []).append(row)
    return out


async def in_sync(ctrl: Controller, inst: Instance, rows: list[Volume]) -> bool:
    """Whether ``inst``'s QEMU holds exactly what ``rows`` (from :func:`attached_on`) give it:
    then a pass has nothing to do and takes no lock (a lock is a claim in the database)."""
    plugged = set(await ctrl.node(inst.node_id).instance_volumes(inst.id))
    attached = {r.id for r in rows if r.attach_state == "attached"}
    return attached <= plugged <= {r.id for r in rows}


async def sync_instance(
    ctrl: Controller, inst: Instance, rows: list[Volume] | None = None
) -> list[str]:
    """Bring the records of ``inst``'s volumes in line with its QEMU; returns what changed.
    ``rows``: its data volumes as read by :func:`attached_on` (read here when None). The caller
    holds the instance's lock (no operation is changing it)."""
    node = ctrl.node(inst.node_id)
    plugged = set(await node.instance_volumes(inst.id))
    if rows is None or plugged != {r.id for r in rows}:
        # a pass's rows may be older than an attach or detach that finished since: a
        # difference is acted on only as the store has it now
        rows = (await attached_on(ctrl, [inst.id]))[inst.id]
    changed = []
    for row in rows:
        if await ctrl.ops.active_for(row.id) or row.attach_state != "attached" or row.id in plugged:
            continue
        # the guest let go after all (or ejected it itself): the volume is free
        log.info("%s: the guest released %s; recording it detached", inst.name, row.id)
        try:
            await node.volume_detach(inst.id, row.id, UNPLUG_TIMEOUT)  # drops the block node
        except CorralError as err:
            log.warning("%s: dropping %s's block node: %s", inst.name, row.id, err.message)
            continue
        async with ctrl.store.write() as s:
            fresh = await s.get(Volume, row.id)
            if (
                fresh is not None
                and fresh.instance_id == inst.id
                and fresh.attach_state == "attached"
            ):
                fresh.instance_id = fresh.device = fresh.attach_state = None
                fresh.attach_time = None
                fresh.state = "available"
                fresh.error = f"released by the guest of {inst.name} ({inst.id})"
        changed.append(row.id)
    for vid in sorted(plugged - {r.id for r in rows}):
        if await ctrl.ops.active_for(vid):
            continue
        log.warning("%s: %s is plugged in but not attached to it; unplugging", inst.name, vid)
        try:
            await node.volume_detach(inst.id, vid, UNPLUG_TIMEOUT)
            changed.append(vid)
        except CorralError as err:
            log.warning("%s: unplugging %s: %s", inst.name, vid, err.message)
    return changed
