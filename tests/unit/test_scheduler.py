"""The scheduler over several fake nodes: filters (ready, cordon, pin, zone, labels,
architecture, memory with QEMU's overhead, fractional cores, disk), weighers (spread, pack),
the claims in the database (concurrent launches never overbook), and the reasons given when
nothing fits."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select, update

from corral.controller import placement_claims, scheduler
from corral.controller.service import Controller
from corral.errors import Invalid, NoResources, NotFound
from corral.node.fake import FakeNode
from corral.store import Store
from corral.store.models import Image, Instance, Node
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, finish, req

GiB, MiB = 1 << 30, 1 << 20


async def _run(ctrl: Controller, **fields: Any) -> Instance:
    inst, op = await ctrl.instances.run(admin(ctrl), req(**fields))
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    return inst


async def _where(ctrl: Controller) -> Counter[str]:
    async with ctrl.store.read() as s:
        rows = await s.execute(
            select(Node.name)
            .join(Instance, Instance.node_id == Node.id)
            .where(Instance.state != "terminated")
        )
        return Counter(name for (name,) in rows)


async def _claimed(ctrl: Controller, name: str) -> tuple[int, float, int]:
    async with ctrl.store.read() as s:
        n = await s.scalar(select(Node).where(Node.name == name))
        assert n is not None
        return n.claimed_memory, n.claimed_cores, n.claimed_disk


# -- weighers ---------------------------------------------------------------------------------
async def test_spread_puts_each_launch_on_the_emptiest_node(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}})
    for _ in range(6):
        await _run(ctrl, memory="512M")
    assert await _where(ctrl) == {"a": 2, "b": 2, "c": 2}


async def test_pack_fills_one_node_before_the_next(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}}, scheduler_weigher="pack")
    for _ in range(3):
        await _run(ctrl, memory="1G")
    assert sorted((await _where(ctrl)).values()) == [3]


async def test_the_random_pick_is_among_the_best_few_only(cluster: Cluster) -> None:
    """With a subset of 3, launches onto three empty nodes and one nearly full one never
    choose the full one (it weighs far below the best)."""
    ctrl = await cluster(
        {"a": {}, "b": {}, "c": {}, "full": {"memory": 1 * GiB}}, scheduler_subset=3
    )
    for _ in range(6):
        await _run(ctrl, memory="700M")
    where = await _where(ctrl)
    assert "full" not in where and sum(where.values()) == 6


# -- filters and their reasons ----------------------------------------------------------------
async def test_nothing_fits_says_why_per_filter(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"memory": 2 * GiB}, "b": {"memory": 2 * GiB}, "c": {}})
    async with ctrl.store.write() as s:
        await s.execute(update(Node).where(Node.name == "c").values(cordoned=True))
    with pytest.raises(NoResources) as err:
        await ctrl.instances.run(admin(ctrl), req(memory="4G"))
    assert "3 nodes: 2 lack 4 GiB free memory, 1 is cordoned" in err.value.message
    assert await _where(ctrl) == {}


async def test_memory_counts_qemu_overhead_and_the_hosts_reserve(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"memory": 2 * GiB}})
    async with ctrl.store.write() as s:  # as a real agent reports them
        await s.execute(update(Node).values(memory_overhead=256 * MiB, memory_reserved=512 * MiB))
    # 2 GiB - 512 MiB reserved = 1536 MiB: two 512 MiB guests with 256 MiB overhead each
    await _run(ctrl, memory="512M")
    await _run(ctrl, memory="512M")
    assert await _claimed(ctrl, "a") == (1536 * MiB, 2.0, 2 * 64 * MiB)
    with pytest.raises(NoResources, match="1 node: 1 lacks 64 MiB free memory"):
        await ctrl.instances.run(admin(ctrl), req(memory="64M"))


async def test_fractional_cores_are_counted_against_the_allocation_ratio(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {"cpus": 1}}, cpu_allocation_ratio=1.0)
    for _ in range(5):  # cr1.nano: 0.2 of a core each, five fill one core exactly
        await _run(ctrl, instance_type="cr1.nano")
    with pytest.raises(NoResources, match=r"1 node: 1 lacks 0\.2 free CPU cores"):
        await ctrl.instances.run(admin(ctrl), req(instance_type="cr1.nano"))
    assert (await _claimed(ctrl, "a"))[1] == pytest.approx(1.0)


async def test_disk_is_a_filter(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"disk": 1 * GiB}, "b": {"disk": 8 * GiB}})
    inst = await _run(ctrl, disk="2G")
    assert inst.node_id == "node-b"
    with pytest.raises(NoResources, match="2 nodes: 2 lack 7 GiB free disk"):
        await ctrl.instances.run(admin(ctrl), req(disk="7G"))


async def test_a_pinned_node_is_used_or_the_launch_says_why(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {"memory": 1 * GiB}})
    inst = await _run(ctrl, node="b")
    assert inst.node_id == "node-b"
    with pytest.raises(NoResources, match="2 nodes: 1 is not the requested node b, 1 lacks"):
        await ctrl.instances.run(admin(ctrl), req(node="b", memory="1G"))
    with pytest.raises(NotFound, match="node nope does not exist"):
        await ctrl.instances.run(admin(ctrl), req(node="nope"))


async def test_zone_and_labels_choose_the_node(cluster: Cluster) -> None:
    ctrl = await cluster(
        {
            "a": {"zone": "z1", "labels": {"disk": "ssd"}},
            "b": {"zone": "z2", "labels": {"disk": "hdd"}},
            "c": {"zone": "z2", "labels": {"disk": "ssd", "gpu": "no"}},
        }
    )
    assert (await _run(ctrl, zone="z2", node_selector={"disk": "ssd"})).node_id == "node-c"
    assert (await _run(ctrl, node_selector={"disk": "hdd"})).node_id == "node-b"
    with pytest.raises(NoResources, match="3 nodes: 2 lack the labels disk=ssd, gpu=yes, 1 is"):
        await ctrl.instances.run(
            admin(ctrl), req(zone="z2", node_selector={"disk": "ssd", "gpu": "yes"})
        )
    with pytest.raises(Invalid, match="availability zone z9 does not exist; the nodes are in z1"):
        await ctrl.instances.run(admin(ctrl), req(zone="z9"))


async def test_the_images_architecture_must_match_the_nodes(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {"arch": "aarch64"}})
    async with ctrl.store.write() as s:
        await s.execute(update(Image).values(arch="aarch64"))
    assert (await _run(ctrl)).node_id == "node-b"
    async with ctrl.store.write() as s:
        await s.execute(update(Image).values(arch="riscv64"))
    with pytest.raises(NoResources, match="2 nodes: 2 do not run riscv64 guests"):
        await ctrl.instances.run(admin(ctrl), req())


async def test_a_node_that_is_not_up_takes_nothing(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    async with ctrl.store.write() as s:
        await s.execute(update(Node).where(Node.name == "a").values(state="down"))
    for _ in range(2):
        assert (await _run(ctrl)).node_id == "node-b"


# -- claims -------------------------------------------------------------------------------------
async def test_ten_concurrent_launches_onto_room_for_four_give_exactly_four(
    cluster: Cluster,
) -> None:
    # each node: 2 GiB - room for two 1 GiB guests; two nodes: room for four
    ctrl = await cluster({"a": {"memory": 2 * GiB}, "b": {"memory": 2 * GiB}}, scheduler_subset=3)
    results = await asyncio.gather(
        *(ctrl.instances.run(admin(ctrl), req(memory="1G")) for _ in range(10)),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 4
    assert all(isinstance(e, NoResources) for e in refused) and len(refused) == 6
    assert await _where(ctrl) == {"a": 2, "b": 2}
    assert (await _claimed(ctrl, "a"))[0] == 2 * GiB
    for _, op in ok:
        assert (await finish(ctrl, op)).status == "succeeded"


async def test_the_claim_is_checked_again_by_the_database(cluster: Cluster) -> None:
    """A controller that weighed a stale picture (the node looked empty) cannot claim past
    the node's capacity: the UPDATE itself refuses."""
    ctrl = await cluster({"a": {"memory": 2 * GiB}})
    policy = scheduler.Policy.from_settings(ctrl.settings)
    need = scheduler.Request(memory=1536 * MiB, cores=1.0, disk=0)
    async with ctrl.store.write() as s:
        (stale,) = await scheduler.nodes(s)
        assert await scheduler.claim(s, stale, need, policy) is not None
        assert await scheduler.claim(s, stale, need, policy) is None  # stale view: refused
    assert await _claimed(ctrl, "a") == (1536 * MiB, 1.0, 0)


async def test_terminating_gives_the_claim_back_and_stopping_does_not(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {"memory": 1 * GiB}})
    inst = await _run(ctrl, memory="1G")
    _, op = await ctrl.instances.stop(admin(ctrl), inst.id)
    await finish(ctrl, op)
    with pytest.raises(NoResources):  # a stopped instance keeps its place to start again
        await ctrl.instances.run(admin(ctrl), req(memory="1G"))
    _, op = await ctrl.instances.terminate(admin(ctrl), inst.id)
    await finish(ctrl, op)
    assert await _claimed(ctrl, "a") == (0, 0.0, 0)
    await _run(ctrl, memory="1G")


async def test_a_failed_run_gives_the_claim_back(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl = await cluster({"a": {"memory": 1 * GiB}})
    node = ctrl.nodes["node-a"]
    assert isinstance(node, FakeNode)

    async def refuse(spec: Any) -> int:
        from corral.node.driver.machine import LaunchFailed

        raise LaunchFailed(f"fake launch failure for {spec.id}")

    monkeypatch.setattr(node, "instance_start", refuse)
    _, op = await ctrl.instances.run(admin(ctrl), req(memory="1G", name="doomed"))
    assert (await finish(ctrl, op)).status == "failed"
    assert await _claimed(ctrl, "a") == (0, 0.0, 0)


async def test_recount_repairs_claims_that_drifted(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _run(ctrl, memory="512M")
    async with ctrl.store.write() as s:
        await s.execute(update(Node).values(claimed_memory=7 * GiB, claimed_cores=9.0))
    async with ctrl.store.write() as s:
        await placement_claims.recount(s)
    assert inst.node_id is not None
    here = inst.node_id.removeprefix("node-")
    assert await _claimed(ctrl, here) == (512 * MiB, 1.0, 64 * MiB)
    other = "b" if here == "a" else "a"
    assert await _claimed(ctrl, other) == (0, 0.0, 0)


async def test_a_bigger_type_must_fit_the_instances_own_node(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"memory": 2 * GiB}})
    inst = await _run(ctrl, instance_type="cr1.small")
    _, op = await ctrl.instances.stop(admin(ctrl), inst.id)
    await finish(ctrl, op)
    await ctrl.instances.modify(admin(ctrl), inst.id, instance_type="cr1.large")
    assert (await _claimed(ctrl, "a"))[0] == 2 * GiB
    await ctrl.instances.modify(admin(ctrl), inst.id, instance_type="cr1.medium")
    assert (await _claimed(ctrl, "a"))[0] == 1 * GiB
    await _run(ctrl, instance_type="cr1.medium")  # the other half
    with pytest.raises(NoResources, match="node cannot hold the new size"):
        await ctrl.instances.modify(admin(ctrl), inst.id, instance_type="cr1.large")
    assert (await _claimed(ctrl, "a"))[0] == 2 * GiB
    assert (await ctrl.instances.get(admin(ctrl), inst.id)).instance_type == "cr1.medium"


# -- the database's filters are the Python filters ----------------------------------------------
async def test_the_sql_filters_and_order_agree_with_the_python_ones(store: Store) -> None:
    """Random nodes and requests: the nodes the database lets through (and their order) are
    the ones FILTERS let through, ordered by capacity_score."""
    rng = random.Random(5)
    zones = ("z1", "z2")
    labels: tuple[dict[str, str], ...] = ({}, {"disk": "ssd"}, {"disk": "hdd", "gpu": "yes"})
    async with store.write() as s:
        for i in range(40):
            memory = rng.choice((1, 2, 4, 8)) * GiB
            cpus = rng.choice((1, 2, 4))
            disk = rng.choice((0, 10 * GiB, 100 * GiB))
            s.add(
                Node(
                    id=f"node-{i}",
                    name=f"n{i:02d}",
                    state=rng.choice(("up", "up", "up", "down")),
                    cordoned=rng.random() < 0.15,
                    zone=rng.choice(zones),
                    arch=rng.choice(("x86_64", "x86_64", "aarch64", "")),
                    labels=rng.choice(labels),
                    cpus=cpus,
                    memory=memory,
                    disk=disk,
                    memory_overhead=rng.choice((0, 256 * MiB)),
                    memory_reserved=rng.choice((0, 512 * MiB)),
                    claimed_memory=rng.randrange(0, memory, 64 * MiB),
                    claimed_cores=round(rng.uniform(0, cpus * 4), 1),
                    claimed_disk=rng.randrange(0, disk + 1, GiB),
                )
            )
    seen: list[int] = []
    for trial in range(60):
        group = rng.choice((None, scheduler.Group("pg-1", "g", "spread")))
        p = scheduler.Policy(
            cpu_ratio=rng.choice((1.0, 4.0)),
            memory_ratio=rng.choice((1.0, 1.5)),
            pack=rng.random() < 0.5,
            subset=1000,
            exclusion_hard=rng.random() < 0.5,
        )
        req = scheduler.Request(
            memory=rng.choice((128, 512, 2048)) * MiB,
            cores=rng.choice((0.2, 1.0, 2.0)),
            disk=rng.choice((0, 5 * GiB)),
            arch=rng.choice(("x86_64", "aarch64")),
            zone=rng.choice((None, "z1")),
            selector=rng.choice(({}, {"disk": "ssd"}, {"gpu": "yes"})),
            group=group,
            exclusion={"svc": "a"} if rng.random() < 0.3 else {},
        )
        ctx = scheduler.Context()
        if group is not None:
            ctx.group_nodes = {f"node-{rng.randrange(40)}" for _ in range(5)}
        if req.exclusion:
            ctx.shared = Counter({f"node-{rng.randrange(40)}": 1 for _ in range(5)})
        async with store.read() as s:
            views = await scheduler.nodes(s)
            by_sql = await scheduler._candidates(s, req, p, ctx)
        by_python, _ = scheduler.sift(views, req, p, ctx)
        assert {n.id for n in by_sql} == {n.id for n in by_python}, trial
        scores = [scheduler.capacity_score(n, req, p) * (-1 if p.pack else 1) for n in by_sql]
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(scores)), trial
        seen.append(len(by_python))
    assert max(seen) > 3 and seen.count(0) > 0  # some trials let many through, some none
