"""Generations, the rule between failure detection (``controller/cluster.py``) and the restart
of a dead node's HA instances on their secondaries (``controller/replicas.py``, issue 16).

``Replicas.fail_over_node`` is called only by the controller
holding the controller lock, after the node's lease expired plus the fence margin, when no
peer reaches the node (so its agent has fenced: its HA QEMUs are dead); it must bump each
moved instance's ``generation`` (``bump_generation``) in the same transaction that changes its
``node_id``, so the returning node's copy is stale and never started; it is repeated (on each
pass while the node stays dead, and after a controller restart) and must be idempotent."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.controller import scheduler
from corral.store.models import Address, Instance, Volume


def bump_generation(row: Instance) -> int:
    """The instance moves (failover, migration): commands and copies of the old generation are
    stale from now on."""
    row.generation = (row.generation or 1) + 1
    return row.generation


async def move_record(
    s: AsyncSession, row: Instance, to: str, network_id: str, claim: list[int | float]
) -> None:
    """The instance now runs on node ``to`` (a migration confirmed, a failover started): in the
    caller's transaction its node, network, address, claim and volumes move together, the old
    node's claim is given back, and its generation is bumped (the old copy is stale)."""
    if row.node_id is not None and (row.claim_memory or row.claim_cores):
        await scheduler.unclaim(s, row.node_id, row.claim_memory, row.claim_cores, row.claim_disk)
    row.node_id, row.network_id = to, network_id
    mem, cores, disk = claim
    row.claim_memory, row.claim_cores, row.claim_disk = int(mem), float(cores), int(disk)
    bump_generation(row)
    await s.execute(
        update(Address).where(Address.instance_id == row.id).values(network_id=network_id)
    )
    for vol in await s.scalars(select(Volume).where(Volume.instance_id == row.id)):
        vol.node_id = to


async def generation_of(s: AsyncSession, iid: str) -> int:
    row = await s.get(Instance, iid)
    return row.generation if row is not None else 0
