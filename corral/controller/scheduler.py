"""Placement: which node gets a new instance. Filters first (like Nova's): the node is up and
not cordoned, is the pinned one, is in the zone, has the labels and the architecture, keeps
anti-affinity, and has the memory (with QEMU's overhead), host cores (against the allocation
ratio) and disk. Then weighers (spread or pack by free capacity, soft anti-affinity), and a
random pick among the best few. The pick is claimed in the same write transaction that
assigns the instance: a conditional UPDATE of the node's claimed totals, so two launches never
overbook a node even when they weighed the same stale picture."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.config import Settings
from corral.errors import Invalid, NoResources, NotFound
from corral.store.models import Instance, Node, Tag

EPSILON = 1e-6  # float slack for fractional cores (0.2 * 5 is not quite 1.0)
TOLERANCE = 0.25  # the random pick is among nodes weighing at most this much below the best
PENALTY = 10.0  # per soft anti-affinity conflict; dwarfs the capacity weighers (0..1)
BONUS = 10.0  # a cluster placement group's pull towards nodes already holding its members
READY = "up"


@dataclass(frozen=True)
class Group:
    """The placement group a new instance joins."""

    id: str
    name: str
    strategy: str  # spread | cluster


@dataclass(frozen=True)
class Request:
    """What one instance needs and where it may go."""

    memory: int  # guest memory, bytes (QEMU's overhead is the node's, added per node)
    cores: float  # host cores: the CPU limit, or one per vCPU
    disk: int  # root disk, bytes
    arch: str = "x86_64"
    zone: str | None = None
    node: str | None = None  # pinned: a node's name or id
    selector: dict[str, str] = field(default_factory=dict)  # labels the node must carry
    account_id: str = ""
    group: Group | None = None
    exclusion: dict[str, str] = field(default_factory=dict)  # exclusion tag key -> value


@dataclass(frozen=True)
class Policy:
    """The operator's knobs, from the settings."""

    cpu_ratio: float = 16.0
    memory_ratio: float = 1.0
    disk_ratio: float = 1.0
    pack: bool = False
    memory_weight: float = 1.0
    cpu_weight: float = 1.0
    disk_weight: float = 0.5
    subset: int = 3
    exclusion_hard: bool = False
    exclusion_keys: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, st: Settings) -> Policy:
        return cls(
            cpu_ratio=st.cpu_allocation_ratio,
            memory_ratio=st.memory_allocation_ratio,
            disk_ratio=st.disk_allocation_ratio,
            pack=st.scheduler_weigher == "pack",
            memory_weight=st.scheduler_memory_weight,
            cpu_weight=st.scheduler_cpu_weight,
            disk_weight=st.scheduler_disk_weight,
            subset=st.scheduler_subset,
            exclusion_hard=st.exclusion == "hard",
            exclusion_keys=tuple(st.exclusion_keys),
        )


@dataclass
class NodeView:
    """A node's row as placement sees it: what it offers and what is claimed."""

    id: str
    name: str
    state: str
    cordoned: bool
    zone: str
    arch: str
    labels: dict[str, Any]
    cpus: int
    memory: int
    disk: int
    memory_overhead: int
    memory_reserved: int
    claimed_memory: int
    claimed_cores: float
    claimed_disk: int

    def memory_capacity(self, p: Policy) -> int:
        return int(self.memory * p.memory_ratio) - self.memory_reserved

    def cores_capacity(self, p: Policy) -> float:
        return self.cpus * p.cpu_ratio

    def disk_capacity(self, p: Policy) -> int:
        return int(self.disk * p.disk_ratio)

    def free_memory(self, p: Policy) -> int:
        return self.memory_capacity(p) - self.claimed_memory

    def free_cores(self, p: Policy) -> float:
        return self.cores_capacity(p) - self.claimed_cores

    def free_disk(self, p: Policy) -> int | None:
        """None: the node did not say how much disk it has."""
        return self.disk_capacity(p) - self.claimed_disk if self.disk else None


COLUMNS = (
    Node.id,
    Node.name,
    Node.state,
    Node.cordoned,
    Node.zone,
    Node.arch,
    Node.labels,
    Node.cpus,
    Node.memory,
    Node.disk,
    Node.memory_overhead,
    Node.memory_reserved,
    Node.claimed_memory,
    Node.claimed_cores,
    Node.claimed_disk,
)


async def nodes(s: AsyncSession) -> list[NodeView]:
    rows = await s.execute(select(*COLUMNS).order_by(Node.name))
    return [NodeView(*r) for r in rows]


@dataclass
class Context:
    """What the anti-affinity filters and weighers know about the instances already placed."""

    group_nodes: set[str] = field(default_factory=set)
    group_zones: set[str] = field(default_factory=set)
    shared: Counter[str] = field(default_factory=Counter)  # node -> instances sharing a tag

    @classmethod
    async def load(cls, s: AsyncSession, req: Request) -> Context:
        ctx = cls()
        if req.group is not None:
            gq = (
                select(Instance.node_id, Node.zone)
                .join(Node, Node.id == Instance.node_id)
                .where(Instance.placement_group_id == req.group.id, Instance.state != "terminated")
                .distinct()
            )
            for node_id, zone in await s.execute(gq):
                ctx.group_nodes.add(str(node_id))
                ctx.group_zones.add(zone)
        if req.exclusion:
            q = (
                select(Instance.node_id, func.count())
                .join(Tag, Tag.resource_id == Instance.id)
                .where(
                    Tag.account_id == req.account_id,
                    or_(*(and_(Tag.key == k, Tag.value == v) for k, v in req.exclusion.items())),
                    Instance.state != "terminated",
                )
                .group_by(Instance.node_id)
            )
            for node_id, n in await s.execute(q):
                ctx.shared[str(node_id)] = int(n)
        return ctx


@dataclass(frozen=True)
class Filter:
    """One filter: ``passes`` says whether a node may take the instance; ``why(n)`` says, for
    ``n`` nodes that may not, what they lack ("2 lack 4 GiB free memory")."""

    name: str
    passes: Callable[[NodeView, Request, Policy, Context], bool]
    why: Callable[[Request, Policy, int], str]


def size(n: int) -> str:
    """Bytes as people say them: 4 GiB, 1.5 GiB, 512 MiB."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if abs(n) >= 1 << shift:
            return f"{round(n / (1 << shift), 1):g} {unit}"
    return f"{n} bytes"


def _verb(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def _need_memory(node: NodeView, req: Request) -> int:
    return req.memory + node.memory_overhead


def _fits_memory(node: NodeView, req: Request, p: Policy, _: Context) -> bool:
    return _need_memory(node, req) <= node.free_memory(p)


def _fits_cores(node: NodeView, req: Request, p: Policy, _: Context) -> bool:
    return req.cores <= node.free_cores(p) + EPSILON


def _fits_disk(node: NodeView, req: Request, p: Policy, _: Context) -> bool:
    free = node.free_disk(p)
    return free is None or req.disk <= free


def _cores(x: float) -> str:
    return f"{x:g} free CPU core{'' if x == 1 else 's'}"


def _selector(req: Request) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(req.selector.items()))


def _exclusion(req: Request) -> str:
    return " or ".join(f"{k}={v}" for k, v in sorted(req.exclusion.items()))


FILTERS: tuple[Filter, ...] = (
    Filter(
        "pin",
        lambda n, r, p, c: r.node is None or r.node in (n.name, n.id),
        lambda r, p, k: f"{_verb(k, 'is', 'are')} not the requested node {r.node}",
    ),
    Filter(
        "ready",
        lambda n, r, p, c: n.state == READY,
        lambda r, p, k: f"{_verb(k, 'is', 'are')} not ready",
    ),
    Filter(
        "cordoned",
        lambda n, r, p, c: not n.cordoned,
        lambda r, p, k: f"{_verb(k, 'is', 'are')} cordoned",
    ),
    Filter(
        "zone",
        lambda n, r, p, c: r.zone is None or n.zone == r.zone,
        lambda r, p, k: f"{_verb(k, 'is', 'are')} not in zone {r.zone}",
    ),
    Filter(
        "arch",
        lambda n, r, p, c: not n.arch or n.arch == r.arch,
        lambda r, p, k: f"{_verb(k, 'does', 'do')} not run {r.arch} guests",
    ),
    Filter(
        "labels",
        lambda n, r, p, c: all(n.labels.get(k) == v for k, v in r.selector.items()),
        lambda r, p, k: f"{_verb(k, 'lacks', 'lack')} the labels {_selector(r)}",
    ),
    Filter(
        "spread",
        lambda n, r, p, c: (
            r.group is None or r.group.strategy != "spread" or n.id not in c.group_nodes
        ),
        lambda r, p, k: (
            f"already {_verb(k, 'holds', 'hold')} an instance of placement group "
            f"{r.group.name if r.group else ''} (spread: one per node)"
        ),
    ),
    Filter(
        "cluster",
        lambda n, r, p, c: (
            r.group is None
            or r.group.strategy != "cluster"
            or not c.group_zones
            or n.zone in c.group_zones
        ),
        lambda r, p, k: (
            f"{_verb(k, 'is', 'are')} outside the zone of placement group "
            f"{r.group.name if r.group else ''} (cluster)"
        ),
    ),
    Filter(
        "exclusion",
        lambda n, r, p, c: not p.exclusion_hard or not c.shared.get(n.id),
        lambda r, p, k: (
            f"already {_verb(k, 'holds', 'hold')} an instance tagged {_exclusion(r)} "
            "(exclusion tag)"
        ),
    ),
    Filter(
        "memory",
        _fits_memory,
        lambda r, p, k: f"{_verb(k, 'lacks', 'lack')} {size(r.memory)} free memory",
    ),
    Filter(
        "cpu",
        _fits_cores,
        lambda r, p, k: f"{_verb(k, 'lacks', 'lack')} {_cores(r.cores)}",
    ),
    Filter(
        "disk",
        _fits_disk,
        lambda r, p, k: f"{_verb(k, 'lacks', 'lack')} {size(r.disk)} free disk",
    ),
)


def sift(
    views: Sequence[NodeView], req: Request, p: Policy, ctx: Context
) -> tuple[list[NodeView], Counter[str]]:
    """The nodes every filter lets pass, and for the others the first filter that failed."""
    ok: list[NodeView] = []
    failed: Counter[str] = Counter()
    for n in views:
        for f in FILTERS:
            if not f.passes(n, req, p, ctx):
                failed[f.name] += 1
                break
        else:
            ok.append(n)
    return ok, failed


def explain(total: int, failed: Counter[str], req: Request, p: Policy) -> str:
    """ "3 nodes: 2 lack 4 GiB free memory, 1 is cordoned"."""
    order = {f.name: i for i, f in enumerate(FILTERS)}
    by_name = {f.name: f for f in FILTERS}
    parts = [
        f"{n} {by_name[name].why(req, p, n)}"
        for name, n in sorted(failed.items(), key=lambda kv: (-kv[1], order[kv[0]]))
    ]
    return f"{total} node{'' if total == 1 else 's'}: {', '.join(parts)}"


def _hint(failed: Counter[str]) -> str:
    tips = ["free capacity (`corral capacity` shows it)"]
    if failed.get("cordoned"):
        tips.append("uncordon a node")
    if set(failed) & {"pin", "zone", "labels", "arch"}:
        tips.append("relax --node, --zone or --node-selector")
    if set(failed) & {"spread", "cluster", "exclusion"}:
        tips.append("add a node or use another placement group")
    tips.append("ask for less (--memory, --cpus, --disk or a smaller --type)")
    return ", ".join(tips[:-1]) + " or " + tips[-1]


def weigh(n: NodeView, req: Request, p: Policy, ctx: Context) -> float:
    """Higher is better. Spread favours the node left with the largest free share of its
    memory, cores and disk; pack the smallest. Soft anti-affinity and cluster groups add
    penalties and bonuses that outweigh capacity."""
    parts = []
    mcap, ccap, dcap = n.memory_capacity(p), n.cores_capacity(p), n.disk_capacity(p)
    if p.memory_weight and mcap > 0:
        left = (n.free_memory(p) - _need_memory(n, req)) / mcap
        parts.append((p.memory_weight, left))
    if p.cpu_weight and ccap > 0:
        parts.append((p.cpu_weight, (n.free_cores(p) - req.cores) / ccap))
    if p.disk_weight and dcap > 0:
        parts.append((p.disk_weight, (dcap - n.claimed_disk - req.disk) / dcap))
    total = sum(w for w, _ in parts)
    score = sum(w * x for w, x in parts) / total if total else 0.0
    if p.pack:
        score = -score
    if not p.exclusion_hard:
        score -= PENALTY * ctx.shared.get(n.id, 0)
    if req.group is not None and req.group.strategy == "cluster" and n.id in ctx.group_nodes:
        score += BONUS
    return score


def rank(ok: Sequence[NodeView], req: Request, p: Policy, ctx: Context) -> list[NodeView]:
    """The candidates best first, the first a random pick among the best few (within
    TOLERANCE of the best weight, at most ``subset`` of them)."""
    scored = sorted(((weigh(n, req, p, ctx), n.name, n) for n in ok), key=lambda t: (-t[0], t[1]))
    if not scored:
        return []
    best = scored[0][0]
    few = [t for t in scored[: p.subset] if t[0] >= best - TOLERANCE]
    first = random.choice(few)
    return [first[2]] + [t[2] for t in scored if t is not first]


@dataclass(frozen=True)
class Placement:
    """The node chosen and what was claimed on it (stored on the instance)."""

    node_id: str
    node_name: str
    memory: int
    cores: float
    disk: int


async def claim(s: AsyncSession, n: NodeView, req: Request, p: Policy) -> Placement | None:
    """Claim ``req`` on node ``n`` if it still fits, checked by the database in the UPDATE
    itself (another controller may have claimed since ``n`` was read); None when it does
    not fit any more. On PostgreSQL the UPDATE also locks the node's row until commit."""
    mem = _need_memory(n, req)
    res = await s.execute(
        update(Node)
        .where(
            Node.id == n.id,
            Node.state == READY,
            Node.cordoned.is_(False),
            Node.claimed_memory + mem + Node.memory_reserved <= Node.memory * p.memory_ratio,
            Node.claimed_cores + req.cores <= Node.cpus * p.cpu_ratio + EPSILON,
            or_(Node.disk == 0, Node.claimed_disk + req.disk <= Node.disk * p.disk_ratio),
        )
        .values(
            claimed_memory=Node.claimed_memory + mem,
            claimed_cores=Node.claimed_cores + req.cores,
            claimed_disk=Node.claimed_disk + req.disk,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(res, "rowcount", 0) != 1:
        return None
    return Placement(n.id, n.name, mem, req.cores, req.disk)


async def _unclaim(s: AsyncSession, node_id: str, memory: int, cores: float, disk: int) -> None:
    await s.execute(
        update(Node)
        .where(Node.id == node_id)
        .values(
            claimed_memory=Node.claimed_memory - memory,
            claimed_cores=Node.claimed_cores - cores,
            claimed_disk=Node.claimed_disk - disk,
        )
        .execution_options(synchronize_session=False)
    )


async def place(s: AsyncSession, req: Request, p: Policy) -> Placement:
    """Choose a node for ``req`` and claim it, inside the caller's write transaction (which
    then assigns the instance and stores the claim on it). Raises NoResources saying, per
    filter, why no node fits."""
    views = await nodes(s)
    if req.node is not None and not any(req.node in (n.name, n.id) for n in views):
        raise NotFound(
            f"node {req.node} does not exist; `corral node ls` lists the nodes",
            field="node",
            resource="node",
        )
    if req.zone is not None and not any(n.zone == req.zone for n in views):
        zones = sorted({n.zone for n in views})
        raise Invalid(
            f"availability zone {req.zone} does not exist; the nodes are in "
            f"{', '.join(zones) or 'no zone yet'}",
            field="zone",
        )
    for _ in range(3):  # a claim lost to another controller: weigh again
        ctx = await Context.load(s, req)
        ok, failed = sift(views, req, p, ctx)
        if not ok:
            if not views:
                raise NoResources(
                    "no node is registered; start Corral with `corral up` or join a node",
                    resource="node",
                )
            raise NoResources(
                f"no node can take this instance ({explain(len(views), failed, req, p)}); "
                f"{_hint(failed)}",
                resource="node",
            )
        for n in rank(ok, req, p, ctx):
            got = await claim(s, n, req, p)
            if got is None:
                continue
            if await _conflicts(s, n.id, req, p):  # placed by another controller meanwhile
                await _unclaim(s, n.id, got.memory, got.cores, got.disk)
                continue
            return got
        views = await nodes(s)
    raise NoResources(
        "every node that fitted was claimed by concurrent launches; try again",
        resource="node",
    )


async def _conflicts(s: AsyncSession, node_id: str, req: Request, p: Policy) -> bool:
    """Hard anti-affinity checked again once the node's row is claimed (and, on PostgreSQL,
    locked): a concurrent launch into the same group or exclusion set has committed by now."""
    if req.group is not None and req.group.strategy == "spread":
        clash = await s.scalar(
            select(Instance.id).where(
                Instance.placement_group_id == req.group.id,
                Instance.node_id == node_id,
                Instance.state != "terminated",
            )
        )
        if clash is not None:
            return True
    if req.exclusion and p.exclusion_hard:
        clash = await s.scalar(
            select(Instance.id)
            .join(Tag, Tag.resource_id == Instance.id)
            .where(
                Instance.node_id == node_id,
                Instance.state != "terminated",
                Tag.account_id == req.account_id,
                or_(*(and_(Tag.key == k, Tag.value == v) for k, v in req.exclusion.items())),
            )
        )
        if clash is not None:
            return True
    return False


def hold(inst: Instance, got: Placement) -> None:
    """Record on the instance what it claimed (in the same transaction as the claim)."""
    inst.node_id = got.node_id
    inst.claim_memory, inst.claim_cores, inst.claim_disk = got.memory, got.cores, got.disk


async def release(s: AsyncSession, inst: Instance) -> None:
    """Give back what ``inst`` claimed on its node; idempotent (the claim is zeroed)."""
    if inst.node_id is None or not (inst.claim_memory or inst.claim_cores or inst.claim_disk):
        return
    await _unclaim(s, inst.node_id, inst.claim_memory, inst.claim_cores, inst.claim_disk)
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
