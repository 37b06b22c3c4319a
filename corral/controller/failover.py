"""The seam between failure detection (``controller/cluster.py``) and the restart of a dead
node's HA instances on their secondaries (issue 16). The HA branch (``controller/replicas.py``:
replicated disks, ``fail_over_node``) fills it; until it is wired, ``NoReplicas`` stands in,
leaves the HA instances where they are and says so.

The contract, for whoever implements ``fail_over_node``: it is called only by the controller
holding the controller lock, after the node's lease expired plus the fence margin, when no
peer reaches the node (so its agent has fenced: its HA QEMUs are dead); it must bump each
moved instance's ``generation`` (``bump_generation``) in the same transaction that changes its
``node_id``, so the returning node's copy is stale and never started; it is repeated (on each
pass while the node stays dead, and after a controller restart) and must be idempotent."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from corral.store.models import Instance

log = logging.getLogger(__name__)


class Replicas(Protocol):
    async def fail_over_node(self, node_id: str) -> None: ...


class NoReplicas:
    """Placeholder until the HA branch's ``Replicas`` is wired in."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def fail_over_node(self, node_id: str) -> None:
        if node_id not in self.asked:
            log.warning(
                "node %s is dead; its HA instances stay there: no replica manager is wired in",
                node_id,
            )
        self.asked.append(node_id)


def bump_generation(row: Instance) -> int:
    """The instance moves (failover, migration): commands and copies of the old generation are
    stale from now on."""
    row.generation = (row.generation or 1) + 1
    return row.generation


async def generation_of(s: AsyncSession, iid: str) -> int:
    row = await s.get(Instance, iid)
    return row.generation if row is not None else 0
