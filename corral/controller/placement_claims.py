"""An instance's claim on its node over its life: recorded at launch (``hold``), given
back when it is terminated (``release``), moved to a new size while it is stopped
(``resize``), and every node's totals recounted from the instances' claims (``recount``), so
a path that forgot to release cannot leak capacity for long."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.controller.scheduler import (
    EPSILON,
    Context,
    Placement,
    Policy,
    Request,
    claim,
    explain,
    nodes,
    sift,
    unclaim,
)
from corral.errors import NoResources, NotFound
from corral.store.models import Instance, Node


def hold(inst: Instance, got: Placement) -> None:
    """Record on the instance what it claimed (in the same transaction as the claim)."""
    inst.node_id = got.node_id
    inst.claim_memory, inst.claim_cores, inst.claim_disk = got.memory, got.cores, got.disk


async def release(s: AsyncSession, inst: Instance) -> None:
    """Give back what ``inst`` claimed on its node; idempotent (the claim is zeroed)."""
    if inst.node_id is None or not (inst.claim_memory or inst.claim_cores or inst.claim_disk):
        return
    await unclaim(s, inst.node_id, inst.claim_memory, inst.claim_cores, inst.claim_disk)
    inst.claim_memory, inst.claim_cores, inst.claim_disk = 0, 0.0, 0


async def resize(s: AsyncSession, inst: Instance, memory: int, cores: float, p: Policy) -> None:
    """A stopped instance's new size, claimed on its own node (it cannot move): the old
    claim is given back and the new one taken, or NoResources saying what is short."""
    if inst.node_id is None:
        return
    old = (inst.claim_memory, inst.claim_cores, inst.claim_disk)
    await release(s, inst)
    view = next((n for n in await nodes(s) if n.id == inst.node_id), None)
    if view is None:
        raise NotFound(f"instance {inst.name}'s node {inst.node_id} is gone", resource="node")
    req = Request(memory=memory, cores=cores, disk=old[2])
    got = await claim(s, view, req, p)
    if got is None:
        why = explain(1, sift([view], req, p, Context())[1], req, p)
        raise NoResources(  # the caller's transaction rolls back: the old claim stands
            f"instance {inst.name}'s node cannot hold the new size ({why}); pick a smaller "
            "type or free the node",
            resource="node",
        )
    hold(inst, got)


async def recount(s: AsyncSession) -> None:
    """Make every node's claimed totals the sum of its live instances' claims again, and
    drop the claims of terminated instances: the repair for any path that forgot to
    release. The node rows are locked first (PostgreSQL), so no claim slips between."""
    await s.execute(select(Node.id).with_for_update())
    await s.execute(
        update(Instance)
        .where(Instance.state == "terminated", Instance.claim_memory != 0)
        .values(claim_memory=0, claim_cores=0.0, claim_disk=0)
        .execution_options(synchronize_session=False)
    )
    sums = {
        node_id: (int(m or 0), float(c or 0), int(d or 0))
        for node_id, m, c, d in await s.execute(
            select(
                Instance.node_id,
                func.sum(Instance.claim_memory),
                func.sum(Instance.claim_cores),
                func.sum(Instance.claim_disk),
            )
            .where(Instance.state != "terminated")
            .group_by(Instance.node_id)
        )
    }
    for node_id, m, c, d in list(
        await s.execute(select(Node.id, Node.claimed_memory, Node.claimed_cores, Node.claimed_disk))
    ):
        want = sums.get(node_id, (0, 0.0, 0))
        if m != want[0] or d != want[2] or abs(c - want[1]) > EPSILON:
            await s.execute(
                update(Node)
                .where(Node.id == node_id)
                .values(claimed_memory=want[0], claimed_cores=want[1], claimed_disk=want[2])
                .execution_options(synchronize_session=False)
            )
