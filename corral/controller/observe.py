"""What the operator views read: the nodes' counters (the agents' ``stats`` call) joined with
the store's names, states and owners, and the in-process counters of operations. Shared by
``corral top`` (GET /v1/stats), ``/metrics`` and the dashboard; read-only."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import select

from corral.controller.accounts import Caller
from corral.errors import CorralError
from corral.node.client import NodeClient
from corral.node.spec import InstanceStats, NodeStats
from corral.store import Store
from corral.store.models import Instance, Node

log = logging.getLogger(__name__)

STATS_WAIT = 10.0  # a node that does not answer in this long is shown without figures

# one registry for the process: operations are counted where they finish, API requests where
# they are answered; /metrics adds the nodes' and instances' figures at each scrape
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="corral", registry=REGISTRY)
OPERATIONS = Counter(
    "corral_operations",
    "Operations finished, by type and outcome",
    ["type", "status"],
    registry=REGISTRY,
)
OPERATION_SECONDS = Histogram(
    "corral_operation_duration_seconds",
    "How long finished operations took from submission, by type",
    ["type"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
    registry=REGISTRY,
)


def operation_finished(op_type: str, status: str, seconds: float) -> None:
    """Called by the operation runner when an operation ends."""
    OPERATIONS.labels(op_type, status).inc()
    OPERATION_SECONDS.labels(op_type).observe(max(0.0, seconds))


@dataclass
class InstanceSample:
    id: str
    name: str
    account_id: str
    node_id: str | None
    node_name: str
    state: str
    stats: InstanceStats | None  # None: not running, or its node did not answer


@dataclass
class NodeSample:
    id: str
    name: str
    state: str
    zone: str
    cordoned: bool
    stats: NodeStats | None
    error: str = ""


@dataclass
class Sample:
    nodes: list[NodeSample] = field(default_factory=list)
    instances: list[InstanceSample] = field(default_factory=list)


async def sample(store: Store, nodes: dict[str, NodeClient], caller: Caller) -> Sample:
    """Every node's counters at once, and the caller's instances (all accounts' for an admin);
    node rows only for an admin."""
    async with store.read() as s:
        rows = list(await s.scalars(select(Node).order_by(Node.name)))
        q = select(Instance).where(Instance.state != "terminated")
        if not caller.admin:
            q = q.where(Instance.account_id == caller.account_id)
        insts = list(await s.scalars(q.order_by(Instance.name)))
    answers = await asyncio.gather(*(_stats(nid, c) for nid, c in nodes.items()))
    got = dict(zip(nodes, answers, strict=True))
    by_instance: dict[str, InstanceStats] = {}
    for stats, _ in got.values():
        for counters in stats.instances if stats else []:
            by_instance[counters.id] = counters
    names = {r.id: r.name for r in rows}
    out = Sample()
    if caller.admin:
        for r in rows:
            stats, err = got.get(r.id, (None, "not connected"))
            out.nodes.append(NodeSample(r.id, r.name, r.state, r.zone, r.cordoned, stats, err))
    for i in insts:
        out.instances.append(
            InstanceSample(
                i.id,
                i.name,
                i.account_id,
                i.node_id,
                names.get(i.node_id or "", ""),
                i.state,
                by_instance.get(i.id) if i.state == "running" else None,
            )
        )
    return out


async def _stats(node_id: str, client: NodeClient) -> tuple[NodeStats | None, str]:
    try:
        return await asyncio.wait_for(client.stats(), STATS_WAIT), ""
    except (CorralError, TimeoutError) as err:
        log.info("no stats from node %s: %s", node_id, err)
        return None, str(err) or "timed out"
