"""`corral rebalance`: greedy live migrations that even out a cluster, like Ganeti's hbal.

The plan is computed on the claims in the store (what the scheduler places by), never on
momentary load: each step tries every movable instance on every other node it fits, keeps the
move that lowers the cluster's score the most, and stops when no move lowers it or after
``max_moves``. The score (lower is better) is

    memory_weight * stdev(memory claimed / capacity) + cpu_weight * stdev(cores claimed / capacity)
    + 1.0 per instance sharing a node with a member of its spread placement group
    + 0.25 per instance that would find no room if its node failed (the N+1 check of
      `corral capacity`)

so repairing anti-affinity comes first, then N+1, then balance. Only running instances move
(live); HA instances stay (their replica would have to move with them), as does an instance
with an operation under way. Nodes that are not ready or are cordoned neither give nor take.
Running the plan is one operation (``cluster-rebalance``) that requests the migrations one
after another, each waiting for the previous to end, so a move that needs room another move
frees finds it; resumed after a crash it skips what already moved."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from corral.controller import capacity, scheduler
from corral.controller.scheduler import NodeView, Policy

VIOLATION = 1.0  # per instance sharing a node with its spread group
UNPLACED = 0.25  # per instance an N+1 evacuation could not place
SHORTLIST = 5  # candidate moves (by balance and violations) whose N+1 is worked out per step
MIN_GAIN = 1e-3  # a move must lower the score by at least this


@dataclass
class Held:
    """An instance with a claim on a node, as the planner sees it."""

    id: str
    name: str
    node_id: str
    memory: int  # the guest's memory (the node's QEMU overhead is added per node)
    cores: float
    disk: int
    group: str | None  # its spread placement group
    movable: bool = True
    why: str = ""  # why it stays (when not movable)


@dataclass
class Move:
    instance: str
    id: str
    source: str  # node names
    target: str
    target_id: str
    score: float  # the cluster's score after this move


@dataclass
class Plan:
    score_before: float
    score_after: float
    moves: list[Move] = field(default_factory=list)
    stays: dict[str, str] = field(default_factory=dict)  # instance name -> why it cannot move
    nodes: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> used after


def _used(v: NodeView, p: Policy) -> tuple[float, float]:
    mem = v.claimed_memory / v.memory_capacity(p) if v.memory_capacity(p) > 0 else 0.0
    cpu = v.claimed_cores / v.cores_capacity(p) if v.cores_capacity(p) > 0 else 0.0
    return mem, cpu


def _balance(views: list[NodeView], p: Policy) -> float:
    if len(views) < 2:
        return 0.0
    used = [_used(v, p) for v in views]
    return p.memory_weight * statistics.pstdev(u[0] for u in used) + p.cpu_weight * (
        statistics.pstdev(u[1] for u in used)
    )


def _violations(held: list[Held]) -> int:
    seen: dict[tuple[str, str], int] = {}
    for h in held:
        if h.group:
            seen[(h.node_id, h.group)] = seen.get((h.node_id, h.group), 0) + 1
    return sum(n - 1 for n in seen.values() if n > 1)


def _unplaced(views: list[NodeView], held: list[Held], p: Policy) -> int:
    as_held = [capacity.Held(h.id, h.name, h.node_id, 0, h.cores, h.disk, h.group) for h in held]
    by_id = {v.id: v for v in views}
    for a, h in zip(as_held, held, strict=True):  # the claim: guest memory + the node's overhead
        node = by_id.get(h.node_id)
        a.memory = h.memory + (node.memory_overhead if node else 0)
    out = 0
    for v in views:
        mine = [a for a in as_held if a.node_id == v.id]
        if mine:
            out += len(capacity.evacuate(v, mine, views, as_held, p).unplaced)
    return out


def score(views: list[NodeView], held: list[Held], p: Policy, *, n1: bool = True) -> float:
    total = _balance(views, p) + VIOLATION * _violations(held)
    if n1:
        total += UNPLACED * _unplaced(views, held, p)
    return total


ROOM = tuple(f for f in scheduler.FILTERS if f.name in ("memory", "cpu", "disk"))


def _fits(h: Held, dst: NodeView, held: list[Held], p: Policy) -> bool:
    """Room on ``dst`` by the scheduler's own filters, and no member of ``h``'s spread group
    there."""
    req = scheduler.Request(memory=h.memory, cores=h.cores, disk=h.disk)
    return all(f.passes(dst, req, p, scheduler.Context()) for f in ROOM) and not (
        h.group and any(o.group == h.group and o.node_id == dst.id for o in held)
    )


def _shift(v: NodeView, h: Held, sign: int) -> NodeView:
    """``v`` with ``h``'s claim (its memory with ``v``'s QEMU overhead) added or taken off."""
    return dataclasses.replace(
        v,
        claimed_memory=v.claimed_memory + sign * (h.memory + v.memory_overhead),
        claimed_cores=v.claimed_cores + sign * h.cores,
        claimed_disk=v.claimed_disk + sign * h.disk,
    )


def _moved(
    views: list[NodeView], held: list[Held], h: Held, dst: NodeView
) -> tuple[list[NodeView], list[Held]]:
    """The views and instances as they would be with ``h`` on ``dst``."""
    out = [
        _shift(v, h, -1) if v.id == h.node_id else _shift(v, h, 1) if v.id == dst.id else v
        for v in views
    ]
    return out, [dataclasses.replace(o, node_id=dst.id) if o.id == h.id else o for o in held]


def plan(views: list[NodeView], held: list[Held], p: Policy, max_moves: int) -> Plan:
    """The greedy plan over the schedulable ``views`` (ready, not cordoned, connected) and the
    instances ``held`` on them."""
    live = [v for v in views if v.state == scheduler.READY and not v.cordoned]
    ids = {v.id for v in live}
    held = [h for h in held if h.node_id in ids]
    out = Plan(score(live, held, p), 0.0)
    out.stays = {h.name: h.why for h in held if not h.movable}
    current, moved = out.score_before, set()
    for _ in range(max_moves):
        by_id = {v.id: v for v in live}
        candidates = []
        for h in held:
            if not h.movable or h.id in moved:  # each instance moves at most once a plan
                continue
            src = by_id[h.node_id]
            for dst in live:
                if dst.id == src.id or not _fits(h, dst, held, p):
                    continue
                v2, h2 = _moved(live, held, h, dst)
                candidates.append((score(v2, h2, p, n1=False), h.name, dst.name, h, dst))
        candidates.sort(key=lambda c: c[:3])
        best = None
        for _quick, _n, _d, h, dst in candidates[:SHORTLIST]:
            v2, h2 = _moved(live, held, h, dst)
            total = score(v2, h2, p)
            if best is None or total < best[0] - 1e-12:
                best = (total, h, dst, v2, h2)
        if best is None or best[0] > current - MIN_GAIN:
            break
        total, h, dst, live, held = best
        out.moves.append(Move(h.name, h.id, by_id[h.node_id].name, dst.name, dst.id, total))
        moved.add(h.id)
        current = total
    out.score_after = current
    out.nodes = {v.name: _used(v, p) for v in live}
    return out
