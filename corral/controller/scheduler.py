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
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import and_, bindparam, case, func, literal, or_, select, update
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
    rows = await (await s.connection()).execute(select(*COLUMNS).order_by(Node.name))
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


def _share(left: float, cap: float) -> float:
    return left / cap if cap > 0 else 0.0


def capacity_score(n: NodeView, req: Request, p: Policy) -> float:
    """The capacity weighers: the weighted mean of the shares of memory, cores and disk the
    node has left after taking ``req`` (0 where it reports no capacity). ``_score_sql`` is
    the same formula for the database."""
    total = p.memory_weight + p.cpu_weight + p.disk_weight
    if not total:
        return 0.0
    mem = _share(n.free_memory(p) - _need_memory(n, req), n.memory_capacity(p))
    cores = _share(n.free_cores(p) - req.cores, n.cores_capacity(p))
    disk = _share(n.disk_capacity(p) - n.claimed_disk - req.disk, n.disk_capacity(p))
    return (p.memory_weight * mem + p.cpu_weight * cores + p.disk_weight * disk) / total


def weigh(n: NodeView, req: Request, p: Policy, ctx: Context) -> float:
    """Higher is better. Spread favours the node left with the largest free share of its
    memory, cores and disk; pack the smallest. Soft anti-affinity and cluster groups add
    penalties and bonuses that outweigh capacity."""
    score = capacity_score(n, req, p)
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


def _claim_stmt(p: Policy) -> Any:
    stmt = _STATEMENTS.get(("claim", p))
    if stmt is None:
        mem: Any = bindparam("b_mem")
        cores: Any = bindparam("b_cores")
        disk: Any = bindparam("b_disk")
        stmt = _STATEMENTS[("claim", p)] = (
            update(Node)
            .where(
                Node.id == bindparam("b_node_id"),
                Node.state == READY,
                Node.cordoned.is_(False),
                Node.claimed_memory + mem + Node.memory_reserved <= Node.memory * p.memory_ratio,
                Node.claimed_cores + cores <= Node.cpus * p.cpu_ratio + EPSILON,
                or_(Node.disk == 0, Node.claimed_disk + disk <= Node.disk * p.disk_ratio),
            )
            .values(
                claimed_memory=Node.claimed_memory + mem,
                claimed_cores=Node.claimed_cores + cores,
                claimed_disk=Node.claimed_disk + disk,
            )
        )
    return stmt


async def claim(s: AsyncSession, n: NodeView, req: Request, p: Policy) -> Placement | None:
    """Claim ``req`` on node ``n`` if it still fits, checked by the database in the UPDATE
    itself (another controller may have claimed since ``n`` was read); None when it does
    not fit any more. On PostgreSQL the UPDATE also locks the node's row until commit."""
    mem = _need_memory(n, req)
    res = await (await s.connection()).execute(
        _claim_stmt(p), {"b_node_id": n.id, "b_mem": mem, "b_cores": req.cores, "b_disk": req.disk}
    )
    if getattr(res, "rowcount", 0) != 1:
        return None
    return Placement(n.id, n.name, mem, req.cores, req.disk)


async def unclaim(s: AsyncSession, node_id: str, memory: int, cores: float, disk: int) -> None:
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
    then assigns the instance and stores the claim on it). The database filters and orders
    the nodes (``_where``, ``_score_sql``) and hands back only the best few; when it finds
    none, every node is read and the Python filters say, per filter, why none fits."""
    await _check_names(s, req)
    for _ in range(3):  # a claim lost to another controller: weigh again
        ctx = await Context.load(s, req)
        found = await _candidates(s, req, p, ctx)
        if not found:
            views = await nodes(s)
            found, failed = sift(views, req, p, ctx)
            if not found:
                if not views:
                    raise NoResources(
                        "no node is registered; start Corral with `corral up` or join a node",
                        resource="node",
                    )
                raise NoResources(
                    f"no node can take this instance "
                    f"({explain(len(views), failed, req, p)}); {_hint(failed)}",
                    resource="node",
                )
        for n in rank(found, req, p, ctx):
            got = await claim(s, n, req, p)
            if got is None:
                continue
            if await _conflicts(s, n.id, req, p):  # placed by another controller meanwhile
                await unclaim(s, n.id, got.memory, got.cores, got.disk)
                continue
            return got
    raise NoResources(
        "every node that fitted was claimed by concurrent launches; try again",
        resource="node",
    )


async def _check_names(s: AsyncSession, req: Request) -> None:
    conn = await s.connection()
    if req.node is not None:
        hit = await conn.scalar(
            select(Node.id).where(or_(Node.name == req.node, Node.id == req.node)).limit(1)
        )
        if hit is None:
            raise NotFound(
                f"node {req.node} does not exist; `corral node ls` lists the nodes",
                field="node",
                resource="node",
            )
    if req.zone is not None:
        hit = await conn.scalar(select(Node.id).where(Node.zone == req.zone).limit(1))
        if hit is None:
            zones = sorted(set(await conn.scalars(select(Node.zone).distinct())))
            raise Invalid(
                f"availability zone {req.zone} does not exist; the nodes are in "
                f"{', '.join(zones) or 'no zone yet'}",
                field="zone",
            )


def _where(req: Request, p: Policy, ctx: Context) -> list[Any]:
    """FILTERS as SQL conditions with bound parameters (``_params`` fills them; the
    statement is built once per shape of request); tests/unit/test_scheduler.py checks they
    agree with FILTERS."""
    mem: Any = bindparam("memory")
    cores: Any = bindparam("cores")
    disk: Any = bindparam("disk")
    w: list[Any] = [
        Node.state == READY,
        Node.cordoned.is_(False),
        or_(Node.arch == "", Node.arch == bindparam("arch")),
        Node.claimed_memory + mem + Node.memory_overhead + Node.memory_reserved
        <= Node.memory * p.memory_ratio,
        Node.claimed_cores + cores <= Node.cpus * p.cpu_ratio + EPSILON,
        or_(Node.disk == 0, Node.claimed_disk + disk <= Node.disk * p.disk_ratio),
    ]
    if req.node is not None:
        w.append(or_(Node.name == bindparam("node"), Node.id == bindparam("node")))
    if req.zone is not None:
        w.append(Node.zone == bindparam("zone"))
    for i, k in enumerate(sorted(req.selector)):
        w.append(Node.labels[k].as_string() == bindparam(f"label_{i}"))
    if req.group is not None and req.group.strategy == "spread" and ctx.group_nodes:
        w.append(Node.id.not_in(bindparam("group_nodes", expanding=True)))
    if req.group is not None and req.group.strategy == "cluster" and ctx.group_zones:
        w.append(Node.zone.in_(bindparam("group_zones", expanding=True)))
    if p.exclusion_hard and ctx.shared:
        w.append(Node.id.not_in(bindparam("shared", expanding=True)))
    return w


def _params(req: Request, ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {
        "memory": req.memory,
        "cores": req.cores,
        "disk": req.disk,
        "arch": req.arch,
        "node": req.node,
        "zone": req.zone,
        "group_nodes": sorted(ctx.group_nodes),
        "group_zones": sorted(ctx.group_zones),
        "shared": sorted(ctx.shared),
    }
    for i, k in enumerate(sorted(req.selector)):
        out[f"label_{i}"] = req.selector[k]
    return out


def _share_sql(left: Any, cap: Any) -> Any:
    return case((cap > 0, left * 1.0 / cap), else_=0.0)


def _score_sql(p: Policy) -> Any:
    """``capacity_score`` for the database (signed for pack)."""
    total = p.memory_weight + p.cpu_weight + p.disk_weight
    if not total:
        return literal(0.0)
    mcap = Node.memory * p.memory_ratio - Node.memory_reserved
    ccap = Node.cpus * p.cpu_ratio
    dcap = Node.disk * p.disk_ratio
    mem = _share_sql(mcap - Node.claimed_memory - bindparam("memory") - Node.memory_overhead, mcap)
    cores = _share_sql(ccap - Node.claimed_cores - bindparam("cores"), ccap)
    disk = _share_sql(dcap - Node.claimed_disk - bindparam("disk"), dcap)
    score = (p.memory_weight * mem + p.cpu_weight * cores + p.disk_weight * disk) / total
    return -score if p.pack else score


_STATEMENTS: dict[tuple[Any, ...], Any] = {}  # built statements by shape (a few dozen at most)


def _select(req: Request, p: Policy, ctx: Context, limit: int | None, cluster: bool) -> Any:
    shape = (
        p,
        limit,
        cluster,
        req.node is not None,
        req.zone is not None,
        tuple(sorted(req.selector)),
        req.group.strategy if req.group is not None else None,
        bool(ctx.group_nodes),
        bool(ctx.group_zones),
        bool(ctx.shared),
    )
    stmt = _STATEMENTS.get(shape)
    if stmt is None:
        where = _where(req, p, ctx)
        if cluster:
            where.append(Node.id.in_(bindparam("group_nodes", expanding=True)))
        stmt = select(*COLUMNS).where(*where).order_by(_score_sql(p).desc(), Node.name)
        if limit is not None:
            stmt = stmt.limit(limit)
        if len(_STATEMENTS) > 256:
            _STATEMENTS.clear()
        _STATEMENTS[shape] = stmt
    return stmt


async def _candidates(s: AsyncSession, req: Request, p: Policy, ctx: Context) -> list[NodeView]:
    """The nodes every filter lets pass, best first by capacity, as many as the random pick
    and the soft penalties and bonuses can need (a penalised node may drop below others; a
    cluster group's nodes are fetched whatever their capacity weight)."""
    conn = await s.connection()
    params = _params(req, ctx)
    limit = p.subset + (0 if p.exclusion_hard else len(ctx.shared))
    rows = await conn.execute(_select(req, p, ctx, limit, False), params)
    found = {r.id: NodeView(*r) for r in rows}
    if req.group is not None and req.group.strategy == "cluster" and ctx.group_nodes:
        rows = await conn.execute(_select(req, p, ctx, None, True), params)
        found.update({r.id: NodeView(*r) for r in rows})
    return list(found.values())


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


# -- high availability: the secondary node (controller/replicas.py) ---------------------------
async def secondary(
    s: AsyncSession, req: Request, primary: str, p: Policy, avoid: Sequence[str] = ()
) -> NodeView:
    """The node that keeps an HA instance's replica and runs it when ``primary`` dies: never
    the primary's node (nor one in ``avoid``), in another zone when one fits, and with room
    to run the instance (checked now; nothing is claimed there until it takes over)."""
    views = await nodes(s)
    first = next((v for v in views if v.id == primary), None)
    others = [v for v in views if v.id != primary and v.id not in avoid]
    if not others:
        raise NoResources(
            "high availability needs a second node to keep the replica on, and there is none "
            "(`corral node ls`); join one with `corral node join`, or run without ha",
            field="ha",
            resource="node",
        )
    free = replace(req, node=None, zone=None, group=None, exclusion={})
    ctx = await Context.load(s, free)
    ok, failed = sift(others, free, p, ctx)
    if not ok:
        raise NoResources(
            f"no second node can keep the replica ({explain(len(others), failed, free, p)}); "
            f"{_hint(failed)}",
            field="ha",
            resource="node",
        )
    ranked = rank(ok, free, p, ctx)
    zone = first.zone if first is not None else ""
    apart = [v for v in ranked if v.zone != zone]
    return (apart or ranked)[0]
