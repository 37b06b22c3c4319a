"""`corral rebalance`: the greedy planner on its own (claims in, moves out), then the
controller's operation carrying a plan out over fake nodes, one migration after another (the
migrations' node half runs real QEMU in tests/integration/test_migration.py and
test_cluster.py)."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select, update

from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller import rebalance
from corral.controller.scheduler import NodeView, Policy
from corral.controller.service import Controller
from corral.errors import Forbidden, Invalid, NoResources
from corral.store.models import Instance, Node, Operation
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, finish, reload, run

GIB = 1 << 30


async def _migrations(ctrl: Controller) -> list[Operation]:
    async with ctrl.store.read() as s:
        rows = await s.scalars(
            select(Operation)
            .where(Operation.type == "instance-migrate")
            .order_by(Operation.created_at)
        )
        return list(rows)


P = Policy()


def _node(name: str, claimed_gib: float = 0, cores: float = 0, memory_gib: int = 8) -> NodeView:
    return NodeView(
        id=f"n-{name}",
        name=name,
        state="up",
        cordoned=False,
        zone="z",
        arch="x86_64",
        labels={},
        cpus=4,
        memory=memory_gib * GIB,
        disk=0,
        memory_overhead=0,
        memory_reserved=0,
        claimed_memory=int(claimed_gib * GIB),
        claimed_cores=cores,
        claimed_disk=0,
    )


def _held(name: str, node: str, gib: float = 1, group: str | None = None) -> rebalance.Held:
    return rebalance.Held(name, name, f"n-{node}", int(gib * GIB), 1.0, 0, group)


def test_a_crowded_node_is_spread_over_empty_ones_and_each_step_lowers_the_score() -> None:
    views = [_node("a", 4, 4), _node("b"), _node("c")]
    held = [_held(f"i{k}", "a") for k in range(4)]
    got = rebalance.plan(views, held, P, max_moves=10)
    scores = [got.score_before] + [m.score for m in got.moves]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert got.score_after < got.score_before / 2
    assert all(m.source == "a" for m in got.moves)
    landed = [m.target for m in got.moves]
    assert sorted(set(landed)) == ["b", "c"]  # spread, not dumped on one node
    assert len({m.id for m in got.moves}) == len(got.moves)  # no instance moves twice
    used = got.nodes
    assert max(u[0] for u in used.values()) - min(u[0] for u in used.values()) <= 1 / 8 + 1e-9


def test_max_moves_bounds_the_plan_and_a_balanced_cluster_needs_none() -> None:
    views = [_node("a", 4, 4), _node("b"), _node("c")]
    held = [_held(f"i{k}", "a") for k in range(4)]
    assert len(rebalance.plan(views, held, P, max_moves=1).moves) == 1
    even = [_node("a", 1, 1), _node("b", 1, 1)]
    got = rebalance.plan(even, [_held("x", "a"), _held("y", "b")], P, max_moves=5)
    assert got.moves == [] and got.score_after == got.score_before


def test_a_spread_groups_shared_node_is_repaired_first_and_never_made() -> None:
    # balanced by memory, but two members of spread group g share node a
    views = [_node("a", 2, 2), _node("b", 2, 2), _node("c", 0, 0)]
    held = [
        _held("g1", "a", group="g"),
        _held("g2", "a", group="g"),
        _held("x", "b"),
        _held("y", "b"),
    ]
    got = rebalance.plan(views, held, P, max_moves=1)
    [move] = got.moves
    assert move.instance in ("g1", "g2") and move.target == "c"
    assert got.score_before - got.score_after >= rebalance.VIOLATION - 1e-9
    # a member never joins a node that holds another member, however crowded its own is
    views = [_node("a", 6, 6), _node("b", 1, 1)]
    held = [_held(f"g{k}", "a", group="g") for k in range(5)] + [_held("m", "b", group="g")]
    held += [_held("z", "a")]
    got = rebalance.plan(views, held, P, max_moves=10)
    assert [m.instance for m in got.moves] == ["z"]


def test_what_cannot_move_stays_and_says_why_and_what_does_not_fit_is_not_planned() -> None:
    views = [_node("a", 6, 6), _node("b", 0, 0, memory_gib=2)]
    held = [_held("big", "a", gib=4), _held("small", "a", gib=1), _held("db", "a", gib=1)]
    held[2].movable, held[2].why = False, "highly available"
    got = rebalance.plan(views, held, P, max_moves=10)
    assert [m.instance for m in got.moves] == ["small"]  # big needs 4 GiB, b has 2
    assert got.stays == {"db": "highly available"}
    # cordoned and not-ready nodes neither give nor take
    views = [_node("a", 4, 4), _node("b"), _node("c")]
    views[1].cordoned = True
    views[2].state = "unreachable"
    got = rebalance.plan(views, [_held(f"i{k}", "a") for k in range(4)], P, max_moves=10)
    assert got.moves == []


async def test_a_rebalance_moves_instances_one_migration_after_another(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}})
    insts = [await run(ctrl, name=f"r{k}", node="a", memory="1G") for k in range(3)]
    stopped = await run(ctrl, name="off", node="a", memory="1G")
    _, op = await ctrl.instances.stop(admin(ctrl), stopped.id, None, False)
    await finish(ctrl, op)
    # dry run: the plan, nothing done
    plan, none = await ctrl.migrations.rebalance(admin(ctrl), max_moves=10, dry_run=True)
    assert none is None and len(plan.moves) == 2  # the stopped one counts but stays
    assert plan.stays == {"off": "stopped: only running instances move (live)"}
    assert [(await reload(ctrl, i.id)).node_id for i in insts] == ["node-a"] * 3
    # for real
    plan, op = await ctrl.migrations.rebalance(admin(ctrl), max_moves=10)
    assert op is not None and op.type == "cluster-rebalance"
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    assert sorted(done.result["moved"]) == sorted(m.instance for m in plan.moves)
    nodes = sorted([str((await reload(ctrl, i.id)).node_id) for i in insts])
    assert nodes == ["node-a", "node-b", "node-c"]
    migrations = await _migrations(ctrl)
    assert len(migrations) == 2 and all(o.status == "succeeded" for o in migrations)
    # the claims moved with them
    async with ctrl.store.read() as s:
        claimed = {n.name: n.claimed_memory for n in await s.scalars(select(Node))}
    assert claimed["b"] == claimed["c"] > 0 and claimed["a"] > claimed["b"]
    # now even: nothing to do, no operation
    again, none = await ctrl.migrations.rebalance(admin(ctrl))
    assert again.moves == [] and none is None


async def test_a_resumed_rebalance_passes_over_what_already_moved(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    one = await run(ctrl, name="one", node="a", memory="1G")
    two = await run(ctrl, name="two", node="a", memory="1G")
    # as if the controller died after the first move: that instance is on its target already
    async with ctrl.store.write() as s:
        await s.execute(update(Instance).where(Instance.id == one.id).values(node_id="node-b"))
    moves = [
        {"instance": "one", "id": one.id, "source": "a", "target": "b", "target_id": "node-b"},
        {"instance": "two", "id": two.id, "source": "a", "target": "b", "target_id": "node-b"},
    ]
    op = await ctrl.ops.submit(
        "cluster-rebalance",
        account_id=None,
        target_kind="cluster",
        target_id="cluster",
        params={"moves": moves, "timeout": 60.0},
    )
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    assert sorted(done.result["moved"]) == ["one", "two"]
    migrations = await _migrations(ctrl)
    assert [o.target_id for o in migrations] == [two.id]  # only the one not yet moved


async def test_refusals_name_the_field(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    with pytest.raises(Invalid) as err:
        await ctrl.migrations.rebalance(admin(ctrl), max_moves=0)
    assert err.value.field == "max_moves"
    dev = await ctrl.accounts.create("dev")
    key = await ctrl.accounts.create_key(dev.id)
    caller = await ctrl.accounts.authenticate(key.id, key.secret)
    with pytest.raises(Forbidden):
        await ctrl.migrations.rebalance(caller)


async def test_a_migration_never_joins_a_member_of_its_spread_group(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}})
    await ctrl.placement_groups.create(admin(ctrl), "web", "spread")
    w1 = await run(ctrl, name="w1", node="a", placement_group="web")
    await run(ctrl, name="w2", node="b", placement_group="web")
    with pytest.raises(NoResources) as err:
        await ctrl.migrations.request(admin(ctrl), w1.id, to="b")
    assert "placement group web" in err.value.message
    _, op = await ctrl.migrations.request(admin(ctrl), w1.id)  # the scheduler picks c
    assert (await finish(ctrl, op)).status == "succeeded"
    assert (await reload(ctrl, w1.id)).node_id == "node-c"


async def test_rest_rebalance(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    await run(ctrl, name="p", node="a", memory="1G")
    await run(ctrl, name="q", node="a", memory="1G")
    app = create_app(ApiContext(ctrl.settings, ctrl))
    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    auth = f"Bearer {data['access_key_id']}:{data['secret_access_key']}"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": auth}
    ) as api:
        r = await api.post("/v1/rebalance", json={"dry_run": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["operation"] is None and len(body["moves"]) == 1
        assert body["score_after"] < body["score_before"]
        assert set(body["nodes"]) == {"a", "b"}
        r = await api.post("/v1/rebalance", json={"max_moves": 500})
        assert r.status_code in (400, 422)
        assert "max_moves" in r.text
        r = await api.post("/v1/rebalance", json={})
        assert r.status_code == 202, r.text
        op = await ctrl.ops.get(r.json()["operation"])
        assert (await finish(ctrl, op)).status == "succeeded"
