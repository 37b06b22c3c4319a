"""Capacity (`corral capacity`, GET /v1/capacity): per node what is claimed and free, how many
more of each instance type fit, and the N+1 verdict: if any one node failed, could its
instances be placed on the others (by the same resource rules as the scheduler), and which
would not fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.controller import instance_types, scheduler
from corral.controller.scheduler import EPSILON, NodeView, Policy
from corral.store.models import Instance, PlacementGroup


@dataclass
class NodeCapacity:
    view: NodeView
    instances: int
    fits: dict[str, int]  # instance type -> how many more fit (memory and cores; disk varies)

    @property
    def schedulable(self) -> bool:
        return self.view.state == scheduler.READY and not self.view.cordoned


@dataclass
class Evacuation:
    """What would happen to one node's instances if it failed."""

    node: str
    instances: int
    unplaced: list[str] = field(default_factory=list)  # instance names that would not fit


@dataclass
class Report:
    policy: Policy
    nodes: list[NodeCapacity]
    fits: dict[str, int]
    evacuations: list[Evacuation]

    @property
    def n_plus_one(self) -> bool:
        return all(not e.unplaced for e in self.evacuations)


@dataclass
class Held:
    id: str
    name: str
    node_id: str
    memory: int
    cores: float
    disk: int
    group: str | None


def _fits(n: NodeView, p: Policy, memory: int, cores: float) -> int:
    if not (n.state == scheduler.READY and not n.cordoned):
        return 0
    by_memory = n.free_memory(p) // (memory + n.memory_overhead)
    by_cores = math.floor((n.free_cores(p) + EPSILON) / cores) if cores else by_memory
    return max(0, int(min(by_memory, by_cores)))


async def report(s: AsyncSession, p: Policy) -> Report:
    views = await scheduler.nodes(s)
    rows = await s.execute(
        select(
            Instance.id,
            Instance.name,
            Instance.node_id,
            Instance.claim_memory,
            Instance.claim_cores,
            Instance.claim_disk,
            Instance.placement_group_id,
            PlacementGroup.strategy,
        )
        .outerjoin(PlacementGroup, PlacementGroup.id == Instance.placement_group_id)
        .where(Instance.state != "terminated", Instance.node_id.is_not(None))
    )
    held = [  # only spread groups constrain where an evacuee may go
        Held(iid, name, str(node), m, c, d, pg if strategy == "spread" else None)
        for iid, name, node, m, c, d, pg, strategy in rows
    ]
    counts: dict[str, int] = {}
    for h in held:
        counts[h.node_id] = counts.get(h.node_id, 0) + 1
    types = list(instance_types.CATALOG.values())
    nodes = [
        NodeCapacity(
            v, counts.get(v.id, 0), {t.name: _fits(v, p, t.memory, t.cores) for t in types}
        )
        for v in views
    ]
    fits = {t.name: sum(n.fits[t.name] for n in nodes) for t in types}
    evacuations = [
        evacuate(v, [h for h in held if h.node_id == v.id], views, held, p)
        for v in views
        if counts.get(v.id)
    ]
    return Report(p, nodes, fits, evacuations)


def evacuate(
    gone: NodeView, mine: list[Held], views: list[NodeView], held: list[Held], p: Policy
) -> Evacuation:
    """Place ``gone``'s instances on the other schedulable nodes, largest first, each on the
    node left with the most free memory that fits it and holds no member of its spread
    group (first-fit decreasing, the same resource rules as a launch)."""
    others = [v for v in views if v.id != gone.id and v.state == scheduler.READY and not v.cordoned]
    free = {v.id: _Free(v.free_memory(p), v.free_cores(p), v.free_disk(p), v) for v in others}
    groups: dict[str, set[str]] = {v.id: set() for v in others}
    for h in held:
        if h.group and h.node_id in groups:
            groups[h.node_id].add(h.group)
    out = Evacuation(gone.name, len(mine))
    for h in sorted(mine, key=lambda h: (-h.memory, -h.cores, h.name)):
        guest = h.memory - gone.memory_overhead
        best: _Free | None = None
        for f in free.values():
            if (
                guest + f.view.memory_overhead <= f.memory
                and h.cores <= f.cores + EPSILON
                and (f.disk is None or h.disk <= f.disk)
                and not (h.group and h.group in groups[f.view.id])
                and (best is None or f.memory > best.memory)
            ):
                best = f
        if best is None:
            out.unplaced.append(h.name)
            continue
        best.memory -= guest + best.view.memory_overhead
        best.cores -= h.cores
        if best.disk is not None:
            best.disk -= h.disk
        if h.group:
            groups[best.view.id].add(h.group)
    return out


@dataclass
class _Free:
    memory: int
    cores: float
    disk: int | None
    view: NodeView
