"""Placement: which node gets a new instance. Filters (up, enough memory and CPUs), then the
weigher (the node with the most free memory wins)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import NoResources
from corral.store.models import Instance, Node


async def pick(s: AsyncSession, memory: int, cpus: int) -> Node:
    nodes = list(await s.scalars(select(Node).where(Node.state == "up")))
    used = dict(
        (
            await s.execute(
                select(Instance.node_id, func.coalesce(func.sum(Instance.memory), 0))
                .where(Instance.state != "terminated", Instance.desired_state == "running")
                .group_by(Instance.node_id)
            )
        ).all()
    )
    best: tuple[int, Node] | None = None
    for node in nodes:
        free = node.memory - int(used.get(node.id, 0))
        if node.memory and free < memory:
            continue
        if node.cpus and cpus > node.cpus:
            continue
        if best is None or free > best[0]:
            best = (free, node)
    if best is None:
        raise NoResources(
            f"no node has {memory >> 20} MiB of memory and {cpus} CPU(s) free; stop or "
            "terminate instances, or ask for less (--memory, --cpus)",
            resource="node",
        )
    return best[1]
