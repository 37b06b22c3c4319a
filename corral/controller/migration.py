"""Live migration driven from the controller: the steps of ``corral.node.migrate_agent`` in
order, over the wire, between a source and a destination node. Store-free: the operation
(``corral.controller.instances``) records each phase and resumes from it after a crash.

Phases: ``preparing`` (the destination's disks, tap, QEMU and NBD), ``mirroring`` (until every
disk is in step), ``migrating`` (memory), ``switching`` (the mirrors end, the destination
confirms it runs the guest, MAC announced), ``cleaning`` (the source's copy removed). Until
memory has moved, any failure or the time limit rolls back: the destination's copy is removed
and the guest runs on at the source, untouched. Once the source is paused by a completed
migration, the destination has the newest state: the only way is forward, unless the
destination's QEMU is gone, when the source resumes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from corral.errors import CorralError, WrongState
from corral.node.client import NodeClient
from corral.node.spec import (
    MIGRATION_TIMED_OUT,
    MIRROR_INCOMPLETE,
    InstanceSpec,
    MigrationPrepared,
    MigrationStatus,
    MirrorDisk,
)

log = logging.getLogger(__name__)

POLL = 0.5
GRACE = 15.0  # seconds past the deadline before the controller calls off what the agent did not
Report = Callable[[str, float, str], Awaitable[None]]


class MigrationFailed(CorralError):
    """The migration was called off; the guest runs where it was."""


@dataclass
class Move:
    iid: str
    src: NodeClient
    dst: NodeClient
    src_spec: InstanceSpec  # the instance as the source node runs it
    dst_spec: InstanceSpec  # the same instance in the destination node's terms
    src_address: str  # the nodes' addresses for migration traffic (their underlay addresses)
    dst_address: str
    sizes: dict[str, int] = field(default_factory=dict)  # volume id -> bytes
    timeout: float = 600.0
    downtime_ms: int = 50
    max_downtime_ms: int = 1000
    mirrors_ended: bool = False  # the source's mirrors ended complete as the memory came in
    # called before the memory copy starts: the guest's frames sent to the destination too
    # (controller/overlays.py), so none is lost while it is paused
    arrive: Callable[[], Awaitable[None]] | None = None


async def _quiet(phase: str, fraction: float, message: str) -> None:
    return None


def disks(spec: InstanceSpec, prepared: MigrationPrepared) -> list[MirrorDisk]:
    """The root overlay only its top (the image is on both nodes); volumes whole."""
    out = []
    for node, export in prepared.exports.items():
        top = node == "root" and spec.root_volume is None
        out.append(MirrorDisk(node=node, export=export, sync="top" if top else "full"))
    return out


def describe(st: MigrationStatus) -> str:
    mem = st.memory
    if st.phase in ("mirroring", "mirrored"):
        return f"disks {st.disk_percent:.0f}% copied"
    return (
        f"memory {mem.percent:.0f}% ({mem.remaining >> 20} MiB left, dirtied at "
        f"{mem.dirty_rate >> 20} MiB/s, {mem.mbps:.0f} Mbit/s, expected downtime "
        f"{mem.expected_downtime_ms} ms, limit {st.downtime_limit_ms} ms)"
    )


async def prepare(m: Move) -> MigrationPrepared:
    return await m.dst.migrate_prepare(m.dst_spec, m.sizes, m.dst_address, m.src_address)


async def mirror(
    m: Move, prepared: MigrationPrepared, deadline: float, report: Report = _quiet
) -> MigrationStatus:
    st = await m.src.migrate_mirror(
        m.iid, prepared.address, prepared.nbd_port, disks(m.src_spec, prepared)
    )
    await report("mirroring", 0.05 + 0.45 * st.disk_percent / 100, describe(st))
    while st.phase == "mirroring":
        if time.monotonic() > deadline:
            raise MigrationFailed(
                f"{MIGRATION_TIMED_OUT}: the disks of {m.iid} did not catch up within "
                f"{m.timeout:.0f} s",
                reason=MIGRATION_TIMED_OUT,
            )
        await report("mirroring", 0.05 + 0.45 * st.disk_percent / 100, describe(st))
        await asyncio.sleep(POLL)
        st = await m.src.migrate_status(m.iid)
    if st.phase != "mirrored":
        raise MigrationFailed(
            f"mirroring the disks of {m.iid} failed ({st.phase}): {st.reason or 'no detail'}"
        )
    return st


async def memory(
    m: Move, prepared: MigrationPrepared, deadline: float, report: Report = _quiet
) -> MigrationStatus:
    st = await m.src.migrate_status(m.iid)
    if st.phase not in ("migrating", "completed"):
        if m.arrive is not None:
            await m.arrive()
        await m.dst.migrate_incoming(m.iid)
        left = max(deadline - time.monotonic(), 1.0)
        st = await m.src.migrate_start(
            m.iid,
            prepared.address,
            prepared.migration_port,
            left,
            m.downtime_ms,
            m.max_downtime_ms,
        )
    await report("migrating", 0.5 + 0.45 * st.memory.percent / 100, describe(st))
    while st.phase == "migrating":
        if time.monotonic() > deadline + GRACE:
            # the source's agent cancels at the deadline; one restarted meanwhile does not
            # know it (the rollback cancels it then)
            raise MigrationFailed(
                f"{MIGRATION_TIMED_OUT}: the migration of {m.iid} did not finish within "
                f"{m.timeout:.0f} s",
                reason=MIGRATION_TIMED_OUT,
            )
        await report("migrating", 0.5 + 0.45 * st.memory.percent / 100, describe(st))
        # returns as soon as the memory is in, the mirrors ended then and there
        st = await m.src.migrate_wait(m.iid, 1.0, end_mirrors=True)
    if st.phase != "completed":
        reason = MIGRATION_TIMED_OUT if MIGRATION_TIMED_OUT in st.reason else "migration-failed"
        raise MigrationFailed(
            f"the migration of {m.iid} ended {st.phase}: {st.reason or 'no detail'}",
            reason=reason,
        )
    m.mirrors_ended = st.mirrors_complete
    return st


async def switch(m: Move) -> str:
    """Memory has moved: end the mirrors, and have the destination confirm it runs."""
    if not m.mirrors_ended:
        await m.src.migrate_complete(m.iid)
    return await m.dst.migrate_finish(m.iid, 60.0)


async def cleanup(m: Move) -> None:
    vols = [v.id for v in m.src_spec.volumes]
    if m.src_spec.root_volume:
        vols.append(m.src_spec.root_volume)
    await m.src.migrate_cleanup(m.iid, m.src_spec.tap, vols)


async def rollback(m: Move) -> None:
    """The destination's copy removed first, then the source's migration called off (and the
    guest resumed if a finished migration paused it)."""
    await m.dst.migrate_abort(m.iid, m.dst_spec.tap)
    try:
        await m.src.migrate_cancel(m.iid, True)
    except WrongState:
        pass  # nothing runs at the source to call off


async def run_until_moved(m: Move, report: Report = _quiet) -> MigrationStatus:
    """Prepare, mirror and move memory; on any failure (the time limit included) rolled back
    and re-raised. On return the source is paused and the destination has the guest."""
    deadline = time.monotonic() + m.timeout
    await report("preparing", 0.0, "preparing the destination")
    try:
        prepared = await prepare(m)
        await mirror(m, prepared, deadline, report)
        return await memory(m, prepared, deadline, report)
    except BaseException:
        await asyncio.shield(rollback(m))
        raise


async def run(m: Move, report: Report = _quiet) -> MigrationStatus:
    """The whole migration, the source's copy removed at the end."""
    done = await run_until_moved(m, report)
    await report("switching", 0.95, "switching over")
    try:
        await switch(m)
    except CorralError as err:
        if err.reason != MIRROR_INCOMPLETE:
            raise
        await asyncio.shield(rollback(m))  # the destination never ran: the source resumes
        raise MigrationFailed(
            f"the disks of {m.iid} could not be completed on the destination ({err.message}); "
            "it runs on at its source",
            reason="migration-failed",
        ) from err
    await report("cleaning", 0.98, "removing the source's copy")
    await cleanup(m)
    return done
