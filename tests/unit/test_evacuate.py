"""``corral node evacuate`` over fake nodes (the nodes' half copies real disks in
tests/integration/test_evacuate.py): the plan spreads the stopped instances and lists what
stays, each cold move copies before the record moves, a failed copy is undone, and an operation
resumed after a controller restart copies anew or finishes its clean-up."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller.evacuations import OP
from corral.controller.service import Controller
from corral.errors import Forbidden, Invalid, NotFound
from corral.node.spec import InstanceSpec
from corral.store.models import Address, Instance, Network, Node, Volume
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, claimed_memory, fake_node, finish, reload, resumed_move, run


async def _stopped(ctrl: Controller, **fields: Any) -> Instance:
    inst = await run(ctrl, **fields)
    _, op = await ctrl.instances.stop(admin(ctrl), inst.name, force=True)
    assert op is not None and (await finish(ctrl, op)).status == "succeeded"
    return await reload(ctrl, inst.id)


async def _spec_at_b(ctrl: Controller, inst: Instance) -> InstanceSpec:
    """``inst``'s spec as node b is given it (on b's network)."""
    async with ctrl.store.read() as s:
        spec = await ctrl.instances.spec(s, inst)
        there = ctrl.networks.spec(await ctrl.networks.default(s, "node-b"))
    return spec.model_copy(update={"network": there})


async def _network_node(ctrl: Controller, iid: str) -> tuple[str, str]:
    async with ctrl.store.read() as s:
        addr = await s.scalar(select(Address).where(Address.instance_id == iid))
        assert addr is not None
        net = await s.get(Network, addr.network_id)
        assert net is not None
        return net.node_id, addr.address


async def test_evacuate_moves_stopped_instances_cold_and_spreads_them(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}}, scheduler_weigher="spread")
    cold = [await _stopped(ctrl, node="a", name=f"s{i}") for i in range(2)]
    live = await run(ctrl, node="a", name="live")
    before = await claimed_memory(ctrl, "a")
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a")
    assert res["cordoned"] and not res["dry_run"]
    assert sorted(m["instance"] for m in res["moves"]) == ["s0", "s1"]
    assert set(res["not_moved"]) == {"live"} and "corral node drain" in res["not_moved"]["live"]
    for m in res["moves"]:
        done = await finish(ctrl, await ctrl.ops.get(m["operation"]))
        assert done.status == "succeeded", done.error
        assert done.params["phase"] == "done"
    rows = [await reload(ctrl, i.id) for i in cold]
    assert {r.node_id for r in rows} == {"node-b", "node-c"}  # spread, not both on one
    for old, row in zip(cold, rows, strict=True):
        assert row.state == "stopped" and row.private_ip == old.private_ip
        assert row.mac == old.mac and row.name == old.name
        assert row.generation == old.generation + 1
        assert await _network_node(ctrl, row.id) == (row.node_id, old.private_ip)
        assert row.id not in fake_node(ctrl, "a").specs
        dst = fake_node(ctrl, str(row.node_id).removeprefix("node-"))
        assert row.id in dst.specs and row.id not in dst.running and not dst.arriving
    assert (await reload(ctrl, live.id)).node_id == "node-a"
    assert await claimed_memory(ctrl, "a") == before - sum(i.claim_memory for i in cold)
    calls = [c[0] for c in fake_node(ctrl, "a").calls if c[1] == cold[0].id and "evac" in c[0]]
    assert calls == ["evacuate_send"]
    # started afterwards, it runs on its new node
    _, op = await ctrl.instances.start(admin(ctrl), cold[0].name)
    assert op is not None and (await finish(ctrl, op)).status == "succeeded"
    assert cold[0].id in fake_node(ctrl, str(rows[0].node_id).removeprefix("node-")).running


async def test_an_attached_volume_moves_with_its_instance(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a", name="web")
    vol, op = await ctrl.volumes.create(admin(ctrl), 1, None, name="data")
    if op is not None:  # a cluster makes the file where it is first attached
        await finish(ctrl, op)
    _, op = await ctrl.volumes.attach(admin(ctrl), vol.id, "web", None)
    assert op is None  # at once to a stopped instance
    async with ctrl.store.read() as s:
        assert (await s.get(Volume, vol.id)).node_id == "node-a"  # type: ignore[union-attr]
    assert vol.id in fake_node(ctrl, "a").volumes
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a")
    done = await finish(ctrl, await ctrl.ops.get(res["moves"][0]["operation"]))
    assert done.status == "succeeded", done.error
    async with ctrl.store.read() as s:
        row = await s.get(Volume, vol.id)
        assert row is not None and row.node_id == "node-b" and row.instance_id == inst.id
    assert vol.id in fake_node(ctrl, "b").volumes and vol.id not in fake_node(ctrl, "a").volumes
    spec = fake_node(ctrl, "b").specs[inst.id]
    assert [v.id for v in spec.volumes] == [vol.id]


async def test_a_dry_run_plans_without_cordoning_claiming_or_moving(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}}, scheduler_weigher="spread")
    for i in range(2):
        await _stopped(ctrl, node="a", name=f"s{i}")
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a", dry_run=True)
    assert res["dry_run"] and not res["cordoned"]
    assert sorted(m["to"] for m in res["moves"]) == ["b", "c"]
    assert all(m["operation"] is None for m in res["moves"])
    assert await claimed_memory(ctrl, "b") == 0 and await claimed_memory(ctrl, "c") == 0
    async with ctrl.store.read() as s:
        a = await s.scalar(select(Node).where(Node.name == "a"))
        assert a is not None and not a.cordoned
    assert not [c for c in fake_node(ctrl, "b").calls if "evac" in c[0]]


async def test_evacuate_to_a_named_node_and_its_refusals(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {"memory": 64 << 20}})
    inst = await _stopped(ctrl, node="a", name="s0")
    with pytest.raises(Forbidden):
        await ctrl.evacuations.evacuate(_user(ctrl), "a")
    with pytest.raises(NotFound, match="node nope does not exist"):
        await ctrl.evacuations.evacuate(admin(ctrl), "nope")
    with pytest.raises(Invalid, match="names the node being evacuated"):
        await ctrl.evacuations.evacuate(admin(ctrl), "a", to="a")
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a", to="c")  # too small
    assert not res["moves"] and "node c cannot take s0" in res["not_moved"]["s0"]
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a", to="b")
    assert [m["to"] for m in res["moves"]] == ["b"]
    assert (await finish(ctrl, await ctrl.ops.get(res["moves"][0]["operation"]))).status == (
        "succeeded"
    )
    assert (await reload(ctrl, inst.id)).node_id == "node-b"


async def test_an_instance_keeps_its_zone(cluster: Cluster) -> None:
    ctrl = await cluster(
        {"a": {"zone": "z1"}, "b": {"zone": "z2"}, "c": {"zone": "z1", "memory": 1 << 30}}
    )
    inst = await _stopped(ctrl, node="a", memory="64M")
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a", dry_run=True)
    assert [m["to"] for m in res["moves"]] == ["c"]  # b is larger, but in another zone
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a", to="b", dry_run=True)
    assert not res["moves"] and "not in zone z1" in res["not_moved"][inst.name]


def _user(ctrl: Controller) -> Any:
    from dataclasses import replace

    return replace(admin(ctrl), admin=False)


async def test_a_copy_that_fails_is_undone_and_the_instance_stays(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a")
    fake_node(ctrl, "a").fail_send.add(inst.id)
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a")
    done = await finish(ctrl, await ctrl.ops.get(res["moves"][0]["operation"]))
    assert done.status == "failed"
    assert "was undone" in str(done.error) and "differs from the destination" in str(done.error)
    row = await reload(ctrl, inst.id)
    assert row.node_id == "node-a" and row.state == "stopped"
    assert row.generation == inst.generation
    assert inst.id in fake_node(ctrl, "a").specs
    assert (
        inst.id not in fake_node(ctrl, "b").specs and inst.id not in fake_node(ctrl, "b").arriving
    )
    assert ("evacuate_abort", inst.id) in fake_node(ctrl, "b").calls
    assert await claimed_memory(ctrl, "b") == 0
    assert await _network_node(ctrl, inst.id) == ("node-a", inst.private_ip)


async def test_an_instance_started_before_its_move_ran_is_not_moved(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a")
    done = await _resumed(ctrl, inst, "requested", start_first=True)
    assert done.status == "failed" and "only a stopped instance moves cold" in str(done.error)
    assert (await reload(ctrl, inst.id)).node_id == "node-a"
    assert await claimed_memory(ctrl, "b") == 0


async def _resumed(ctrl: Controller, inst: Instance, phase: str, start_first: bool = False) -> Any:
    def starting(i: Instance) -> None:
        i.desired_state, i.state = "running", "pending"

    return await resumed_move(ctrl, OP, inst, phase, starting if start_first else None)


@pytest.mark.parametrize("phase", ["copying", "verified"])
async def test_a_restart_before_the_record_moved_copies_anew(cluster: Cluster, phase: str) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a")
    spec = await _spec_at_b(ctrl, inst)
    await fake_node(ctrl, "b").evacuate_receive(spec, {}, "127.0.0.1")  # what the first try left
    if phase == "verified":
        await fake_node(ctrl, "b").evacuate_accept(spec)
    done = await _resumed(ctrl, inst, phase)
    assert done.status == "succeeded", done.error
    events = [e.message for e in await ctrl.ops.events(done.id)]
    assert any("copying anew" in m for m in events)
    assert (await reload(ctrl, inst.id)).node_id == "node-b"
    assert inst.id in fake_node(ctrl, "b").specs and inst.id not in fake_node(ctrl, "a").specs


async def test_a_restart_after_the_record_moved_finishes_the_cleanup(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a")
    spec = await _spec_at_b(ctrl, inst)
    await fake_node(ctrl, "b").evacuate_receive(spec, {}, "127.0.0.1")
    await fake_node(ctrl, "b").evacuate_accept(spec)
    async with ctrl.store.write() as s:
        row = await s.get(Instance, inst.id)
        assert row is not None
        row.node_id = "node-b"
    done = await _resumed(ctrl, inst, "moved")
    assert done.status == "succeeded", done.error
    assert inst.id not in fake_node(ctrl, "a").specs and inst.id in fake_node(ctrl, "b").specs
    assert not [c for c in fake_node(ctrl, "a").calls if c[0] == "evacuate_send"]


async def test_a_restart_after_it_was_undone_only_fails(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a")
    done = await _resumed(ctrl, inst, "rolled-back")
    assert done.status == "failed" and "was undone" in str(done.error)
    assert (await reload(ctrl, inst.id)).node_id == "node-a"
    assert await claimed_memory(ctrl, "b") == 0
    assert not [c for c in fake_node(ctrl, "a").calls if c[0] == "evacuate_send"]


async def test_the_rest_api_evacuates_and_refuses_unknown_fields(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _stopped(ctrl, node="a")
    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    auth = f"Bearer {data['access_key_id']}:{data['secret_access_key']}"
    transport = httpx.ASGITransport(app=create_app(ApiContext(ctrl.settings, ctrl)))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        bad = await c.post(
            "/v1/nodes/a/evacuate", json={"spread": 1}, headers={"Authorization": auth}
        )
        assert bad.status_code == 400 and "spread" in bad.text
        plan = await c.post(
            "/v1/nodes/a/evacuate", json={"dry_run": True}, headers={"Authorization": auth}
        )
        assert plan.status_code == 200 and plan.json()["moves"][0]["to"] == "b"
        r = await c.post("/v1/nodes/a/evacuate", json={}, headers={"Authorization": auth})
        assert r.status_code == 202, r.text
        op_id = r.json()["moves"][0]["operation"]
    assert (await finish(ctrl, await ctrl.ops.get(op_id))).status == "succeeded"
    assert (await reload(ctrl, inst.id)).node_id == "node-b"


async def test_a_stopped_vpc_instance_moves_cold_to_a_node_without_its_subnet(
    cluster: Cluster,
) -> None:
    """Its subnet's network is made on the destination for the copy (networks.py
    hold_arrival) and stays there with it; the source's goes with its last instance."""
    ctrl = await cluster({"a": {}, "b": {}})
    me = admin(ctrl)
    vpc = await ctrl.vpcs.create(me, "10.9.0.0/16")
    sub = await ctrl.vpcs.create_subnet(me, vpc.id, "10.9.1.0/24")
    inst = await _stopped(ctrl, node="a", subnet=sub.id, address="10.9.1.30")
    src_net = inst.network_id
    res = await ctrl.evacuations.evacuate(admin(ctrl), "a", to="b")
    (move,) = res["moves"]
    done = await finish(ctrl, await ctrl.ops.get(move["operation"]))
    assert done.status == "succeeded", done.error
    row = await reload(ctrl, inst.id)
    assert (row.node_id, row.private_ip, row.state) == ("node-b", "10.9.1.30", "stopped")
    async with ctrl.store.read() as s:
        net = await s.get(Network, row.network_id)
    assert net is not None and (net.node_id, net.name) == ("node-b", sub.id)
    assert net.id in fake_node(ctrl, "b").hosts  # on the node, with its stopped instance
    assert src_net not in fake_node(ctrl, "a").hosts
    assert ("network_remove", src_net) in fake_node(ctrl, "a").calls
