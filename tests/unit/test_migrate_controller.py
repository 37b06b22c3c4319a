"""The migrate operation over fake nodes (the nodes' half runs real QEMU in
tests/integration/test_migration.py): the record moves only after the destination confirms,
the scheduler picks another node, a migration that does not converge is rolled back, and an
operation resumed after a controller crash decides by its phase and the source's state."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller.migrations import OP
from corral.controller.service import Controller
from corral.errors import Invalid, NoResources, WrongState
from corral.store.models import Address, Instance, Network, Node
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, claimed_memory, fake_node, finish, reload, resumed_move, run


async def _network_node(ctrl: Controller, iid: str) -> tuple[str, str]:
    async with ctrl.store.read() as s:
        addr = await s.scalar(select(Address).where(Address.instance_id == iid))
        assert addr is not None
        net = await s.get(Network, addr.network_id)
        inst = await s.get(Instance, iid)
        assert net is not None and inst is not None
        assert inst.network_id == net.id
        return net.node_id, addr.address


async def test_migrate_moves_the_record_after_the_destination_confirms(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a")
    before = await claimed_memory(ctrl, "a")
    assert before > 0 and await claimed_memory(ctrl, "b") == 0
    _, op = await ctrl.migrations.request(admin(ctrl), inst.name, to="b")
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    assert done.params["phase"] == "done"
    row = await reload(ctrl, inst.id)
    assert row.node_id == "node-b" and row.state == "running"
    assert row.pid == fake_node(ctrl, "b").running[inst.id]
    assert inst.id not in fake_node(ctrl, "a").running and inst.id not in fake_node(ctrl, "a").specs
    assert await _network_node(ctrl, inst.id) == ("node-b", inst.private_ip)
    assert await claimed_memory(ctrl, "a") == 0 and await claimed_memory(ctrl, "b") == before
    calls = [
        c for c in fake_node(ctrl, "a").calls + fake_node(ctrl, "b").calls if "migrate" in c[0]
    ]
    assert [c[0] for c in calls] == [
        *("migrate_start", "migrate_complete", "migrate_cleanup"),  # the source's, in order
        *("migrate_prepare", "migrate_finish"),  # the destination's
    ]
    events = [e.message for e in await ctrl.ops.events(op.id)]
    assert any("mirroring" in m for m in events) and any("switching" in m for m in events)


async def test_without_to_the_scheduler_picks_another_node(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {"memory": 1 << 30}})
    inst = await run(ctrl, node="a")
    _, op = await ctrl.migrations.request(admin(ctrl), inst.id)
    assert (await finish(ctrl, op)).status == "succeeded"
    assert (await reload(ctrl, inst.id)).node_id == "node-b"  # c is the smaller


async def test_the_scheduler_passes_over_nodes_where_its_address_is_taken(
    cluster: Cluster,
) -> None:
    """One address pool spans the nodes' copies of a subnet now, but a store from before it
    can hold one address on two nodes: the destination picked must not give the instance's
    address to another."""
    ctrl = await cluster({"a": {}, "b": {}, "c": {"memory": 1 << 30}})
    inst = await run(ctrl, node="a", name="x")
    other = await run(ctrl, node="b", name="y", memory="64M")
    assert other.private_ip != inst.private_ip  # one pool across the nodes
    async with ctrl.store.write() as s:  # as the per-node pools of an older store left it
        await s.execute(
            update(Address).where(Address.instance_id == other.id).values(address=inst.private_ip)
        )
        await s.execute(
            update(Instance).where(Instance.id == other.id).values(private_ip=inst.private_ip)
        )
    _, op = await ctrl.migrations.request(admin(ctrl), inst.id)
    assert (await finish(ctrl, op)).status == "succeeded"
    assert (await reload(ctrl, inst.id)).node_id == "node-c"  # b is larger but holds it
    await ctrl.cluster.cordon("a", True)  # now only b is left, and it holds the address
    with pytest.raises(NoResources, match=f"cordoned; 1 more holds its address {inst.private_ip}"):
        await ctrl.migrations.request(admin(ctrl), inst.id)


async def test_a_migration_keeps_hard_exclusion_tags(cluster: Cluster) -> None:
    """A move passes the same exclusion filter as a launch: it never puts an instance beside
    one sharing its exclusion tag (before, a migration's request carried no tags)."""
    ctrl = await cluster({"a": {}, "b": {}, "c": {}}, exclusion_tags="service", exclusion="hard")
    x = await run(ctrl, node="a", name="x", tags={"service": "mail"})
    await run(ctrl, node="b", name="y", tags={"service": "mail"})
    with pytest.raises(NoResources, match="already holds an instance tagged service=mail"):
        await ctrl.migrations.request(admin(ctrl), x.name, to="b")
    _, op = await ctrl.migrations.request(admin(ctrl), x.name)
    assert (await finish(ctrl, op)).status == "succeeded"
    assert (await reload(ctrl, x.id)).node_id == "node-c"


async def test_a_migration_is_refused_clearly(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {"memory": 64 << 20}})
    inst = await run(ctrl, node="a")
    with pytest.raises(Invalid, match="already runs on a"):
        await ctrl.migrations.request(admin(ctrl), inst.name, to="a")
    with pytest.raises(NoResources, match="no other node can take"):
        await ctrl.migrations.request(admin(ctrl), inst.name)
    _, stop = await ctrl.instances.stop(admin(ctrl), inst.name, force=True)
    await finish(ctrl, stop)
    with pytest.raises(WrongState, match="only a running instance migrates"):
        await ctrl.migrations.request(admin(ctrl), inst.name, to="b")


async def test_a_migration_that_does_not_converge_is_rolled_back(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a")
    fake_node(ctrl, "a").never_converge.add(inst.id)
    _, op = await ctrl.migrations.request(admin(ctrl), inst.name, to="b", timeout=5)
    done = await finish(ctrl, op)
    assert done.status == "failed"
    assert "migration-timed-out" in str(done.error)
    row = await reload(ctrl, inst.id)
    assert row.node_id == "node-a" and row.state == "running"
    assert inst.id in fake_node(ctrl, "a").running
    assert inst.id not in fake_node(ctrl, "b").running and inst.id not in fake_node(ctrl, "b").specs
    assert ("migrate_abort", inst.id) in fake_node(ctrl, "b").calls
    assert await claimed_memory(ctrl, "b") == 0
    assert await _network_node(ctrl, inst.id) == ("node-a", inst.private_ip)


async def test_a_disk_mirror_that_did_not_end_complete_resumes_the_source(
    cluster: Cluster,
) -> None:
    """The memory moved but the source could not end a disk mirror complete (its last writes
    not copied): the destination, whose disks lack them, is never resumed and is removed; the
    paused source resumes; the record and claim stay at the source."""
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a")
    fake_node(ctrl, "a").mirror_fails.add(inst.id)
    _, op = await ctrl.migrations.request(admin(ctrl), inst.name, to="b")
    done = await finish(ctrl, op)
    assert done.status == "failed"
    assert "could not be completed on the destination" in str(done.error), done.error
    assert done.params["phase"] == "rolled-back"
    assert ("migrate_finish", inst.id) not in fake_node(ctrl, "b").calls  # never resumed there
    assert ("migrate_abort", inst.id) in fake_node(ctrl, "b").calls
    assert ("migrate_cancel", inst.id) in fake_node(ctrl, "a").calls  # resumed at the source
    row = await reload(ctrl, inst.id)
    assert row.node_id == "node-a" and row.state == "running"
    assert inst.id not in fake_node(ctrl, "b").running and inst.id not in fake_node(ctrl, "b").specs
    assert await claimed_memory(ctrl, "b") == 0
    assert await _network_node(ctrl, inst.id) == ("node-a", inst.private_ip)


async def _resumed(ctrl: Controller, inst: Instance, phase: str) -> Any:
    return await resumed_move(ctrl, OP, inst, phase, timeout=60.0)


async def _leave_prepared(ctrl: Controller, inst: Instance, completed: bool) -> None:
    async with ctrl.store.read() as s:
        spec = await ctrl.instances.spec(s, inst)
        there = ctrl.networks.spec(await ctrl.networks.default(s, "node-b"))
    spec = spec.model_copy(update={"network": there})  # as the destination is given it
    await fake_node(ctrl, "b").migrate_prepare(spec, {}, "127.0.0.1")
    await fake_node(ctrl, "a").migrate_mirror(inst.id, "127.0.0.1", 1, [])
    if completed:
        await fake_node(ctrl, "a").migrate_start(inst.id, "127.0.0.1", 2)


@pytest.mark.parametrize("phase", ["preparing", "mirroring", "migrating"])
async def test_a_crash_before_memory_moved_rolls_back(cluster: Cluster, phase: str) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await reload(ctrl, (await run(ctrl, node="a")).id)
    await _leave_prepared(ctrl, inst, completed=False)
    done = await _resumed(ctrl, inst, phase)
    assert done.status == "failed" and "rolled back" in str(done.error)
    assert (await reload(ctrl, inst.id)).node_id == "node-a"
    assert inst.id in fake_node(ctrl, "a").running and inst.id not in fake_node(ctrl, "b").specs
    assert await claimed_memory(ctrl, "b") == 0


@pytest.mark.parametrize("phase", ["migrating", "switching"])
async def test_a_crash_after_memory_moved_rolls_forward(cluster: Cluster, phase: str) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await reload(ctrl, (await run(ctrl, node="a")).id)
    await _leave_prepared(ctrl, inst, completed=True)
    done = await _resumed(ctrl, inst, phase)
    assert done.status == "succeeded", done.error
    assert (await reload(ctrl, inst.id)).node_id == "node-b"
    assert inst.id not in fake_node(ctrl, "a").running and inst.id in fake_node(ctrl, "b").running
    assert await claimed_memory(ctrl, "a") == 0


async def test_a_crash_after_the_record_moved_finishes_the_cleanup(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await reload(ctrl, (await run(ctrl, node="a")).id)
    await _leave_prepared(ctrl, inst, completed=True)
    await fake_node(ctrl, "b").migrate_finish(inst.id)
    async with ctrl.store.write() as s:
        row = await s.get(Instance, inst.id)
        assert row is not None
        row.node_id = "node-b"
    done = await _resumed(ctrl, inst, "moved")
    assert done.status == "succeeded", done.error
    assert inst.id not in fake_node(ctrl, "a").specs and inst.id in fake_node(ctrl, "b").running


async def test_the_rest_api_migrates_and_refuses_unknown_fields(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a")
    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    auth = f"Bearer {data['access_key_id']}:{data['secret_access_key']}"
    transport = httpx.ASGITransport(app=create_app(ApiContext(ctrl.settings, ctrl)))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://corral.test", headers={"Authorization": auth}
    ) as c:
        bad = await c.post(f"/v1/instances/{inst.name}/migrate", json={"to": "b", "live": 1})
        assert bad.status_code in (400, 422), bad.text
        assert "live" in bad.text
        r = await c.post(f"/v1/instances/{inst.name}/migrate", json={"to": "b", "timeout": 60})
        assert r.status_code == 202, r.text
        op = await ctrl.ops.get(r.json()["operation"]["id"])
        assert op.type == "instance-migrate" and op.params["timeout"] == 60
        assert (await finish(ctrl, op)).status == "succeeded"
        assert (await reload(ctrl, inst.id)).node_id == "node-b"


async def test_drain_cordons_and_spreads_the_running_instances(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}}, scheduler_weigher="spread")
    moving = [await run(ctrl, node="a", name=f"d{i}") for i in range(2)]
    stopped = await run(ctrl, node="a", name="dstop")
    _, stop = await ctrl.instances.stop(admin(ctrl), stopped.name, force=True)
    await finish(ctrl, stop)
    res = await ctrl.migrations.drain(admin(ctrl), "a")
    assert res["cordoned"] and res["node"] == "a"
    assert sorted(m["instance"] for m in res["migrations"]) == ["d0", "d1"]
    assert set(res["not_moved"]) == {"dstop"} and "stopped" in res["not_moved"]["dstop"]
    for m in res["migrations"]:
        assert (await finish(ctrl, await ctrl.ops.get(m["operation"]))).status == "succeeded"
    nodes = {(await reload(ctrl, i.id)).node_id for i in moving}
    assert nodes == {"node-b", "node-c"}  # spread, not both on one node
    async with ctrl.store.read() as s:
        a = await s.scalar(select(Node).where(Node.name == "a"))
        assert a is not None and a.cordoned
    with pytest.raises(NoResources):  # cordoned: nothing new lands there
        await run(ctrl, node="a")


async def test_the_controller_calls_off_a_migration_its_source_agent_forgot(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source agent restarted mid-migration has lost its watch (and the time limit): the
    controller's own deadline still ends it, rolled back."""
    from corral.controller import migration

    monkeypatch.setattr(migration, "GRACE", 0.0)
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a")
    src = fake_node(ctrl, "a")

    async def start_forever(iid: str, *args: Any, **kw: Any) -> Any:
        src.outgoing[iid] = "migrating"  # runs on, and nobody on the node will stop it
        return await src.migrate_status(iid)

    monkeypatch.setattr(src, "migrate_start", start_forever)
    _, op = await ctrl.migrations.request(admin(ctrl), inst.name, to="b", timeout=1)
    done = await finish(ctrl, op)
    assert done.status == "failed" and "migration-timed-out" in str(done.error)
    assert ("migrate_cancel", inst.id) in src.calls
    assert (await reload(ctrl, inst.id)).node_id == "node-a"
    assert inst.id not in fake_node(ctrl, "b").specs


async def test_a_vpc_instance_moves_to_a_node_without_its_subnet(cluster: Cluster) -> None:
    """Its subnet's network is made on the destination for the move (the VPC's namespace
    there, its segment joined), kept while the move lasts, and its address kept; the source's
    goes with its last instance. A move that rolls back takes the new network away again;
    one to a node where another subnet of the VPC runs joins it in the VPC's namespace."""
    ctrl = await cluster({"a": {}, "b": {}, "c": {}})
    me = admin(ctrl)
    vpc = await ctrl.vpcs.create(me, "10.8.0.0/16")
    one = await ctrl.vpcs.create_subnet(me, vpc.id, "10.8.1.0/24")
    two = await ctrl.vpcs.create_subnet(me, vpc.id, "10.8.2.0/24")
    inst = await run(ctrl, node="a", subnet=one.id, address="10.8.1.20")
    src_net = inst.network_id
    a, b = fake_node(ctrl, "a"), fake_node(ctrl, "b")
    assert src_net in a.policies and not any(p.network.vpc for p in b.policies.values())

    # rolled back (never converges): the network made on b leaves it again
    a.never_converge.add(inst.id)
    _, op = await ctrl.migrations.request(me, inst.name, to="b", timeout=5)
    assert (await finish(ctrl, op)).status == "failed"
    a.never_converge.discard(inst.id)
    async with ctrl.store.read() as s:
        made = await s.scalar(
            select(Network).where(Network.node_id == "node-b", Network.name == one.id)
        )
    assert made is not None and made.transit is not None
    assert made.id not in b.policies and ("network_remove", made.id) in b.calls
    assert await _network_node(ctrl, inst.id) == ("node-a", "10.8.1.20")

    # moved: the same address on b's network of the subnet; a's goes with its last instance
    _, op = await ctrl.migrations.request(me, inst.name, to="b")
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    row = await reload(ctrl, inst.id)
    assert (row.node_id, row.network_id, row.private_ip) == ("node-b", made.id, "10.8.1.20")
    assert made.id in b.policies and [p.address for p in b.policies[made.id].ports] == ["10.8.1.20"]
    assert src_net not in a.policies and ("network_remove", src_net) in a.calls

    # another subnet of the VPC runs on c: the move joins it in the VPC's namespace there,
    # which routes between the two (one transit /30, one rule set covering both)
    other = await run(ctrl, node="c", subnet=two.id)
    _, op = await ctrl.migrations.request(me, inst.name, to="c")
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    row = await reload(ctrl, inst.id)
    async with ctrl.store.read() as s:
        mine, theirs = (
            await s.get(Network, row.network_id),
            await s.get(Network, other.network_id),
        )
    assert mine is not None and theirs is not None and mine.id != theirs.id
    assert (row.node_id, mine.name, row.private_ip) == ("node-c", one.id, "10.8.1.20")
    assert (mine.namespace, mine.transit) == (theirs.namespace, theirs.transit)
    pol = fake_node(ctrl, "c").policies[mine.id]
    assert {n.id for n in pol.networks} == {mine.id, theirs.id}
    assert {p.address for p in pol.ports} == {"10.8.1.20", other.private_ip}
