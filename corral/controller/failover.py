"""Generations, the rule between failure detection (``controller/cluster.py``) and the restart
of a dead node's HA instances on their secondaries (``controller/replicas.py``, issue 16).

``Replicas.fail_over_node`` is called only by the controller
holding the controller lock, after the node's lease expired plus the fence margin, when no
peer reaches the node (so its agent has fenced: its HA QEMUs are dead); it must bump each
moved instance's ``generation`` (``bump_generation``) in the same transaction that changes its
``node_id``, so the returning node's copy is stale and never started; it is repeated (on each
pass while the node stays dead, and after a controller restart) and must be idempotent."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from corral.store.models import Instance


def bump_generation(row: Instance) -> int:
    """The instance moves (failover, migration): commands and copies of the old generation are
    stale from now on."""
    row.generation = (row.generation or 1) + 1
    return row.generation


async def generation_of(s: AsyncSession, iid: str) -> int:
    row = await s.get(Instance, iid)
    return row.generation if row is not None else 0
