"""High availability, the controller's half over fake nodes (the nodes' half runs real QEMU in
tests/integration/test_ha.py): `ha` on a launch stores a secondary node chosen by the
scheduler (never the primary's, another zone when there is one) and is refused clearly without
one; the reconciler replicates and resyncs; a dead node's HA instances start on their
secondaries with their identity, the record moving only once they run."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import select, update

from corral.api import views
from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.instances import _ha_tag
from corral.appliances.spec import Service
from corral.controller.replicas import OP
from corral.controller.service import Controller
from corral.errors import EnvironmentProblem, NoResources, WrongState
from corral.store.models import Instance, Network, Node
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, claimed_memory, fake_node, finish, reload, req, run


async def test_an_ha_instance_gets_a_secondary_on_another_node(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a", ha=True)
    assert inst.ha and inst.node_id == "node-a"
    assert inst.secondary_node_id == "node-b"
    plain = await run(ctrl, node="a")
    assert not plain.ha and plain.secondary_node_id is None


async def test_the_secondary_is_in_another_zone_when_one_exists(cluster: Cluster) -> None:
    # b is the emptier node in the primary's zone; c in another zone wins anyway
    ctrl = await cluster(
        {"a": {"zone": "z1"}, "b": {"zone": "z1"}, "c": {"zone": "z2", "memory": 2 << 30}}
    )
    inst = await run(ctrl, node="a", ha=True)
    assert inst.secondary_node_id == "node-c"


async def test_ha_without_a_second_node_is_refused_naming_the_field(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}})
    with pytest.raises(NoResources, match="needs a second node") as err:
        await ctrl.instances.run(admin(ctrl), req(ha=True))
    assert err.value.field == "ha"
    assert await ctrl.instances.list(admin(ctrl)) == []  # nothing half-made


async def test_ha_with_no_room_on_any_other_node_is_refused(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {"memory": 64 << 20}})
    with pytest.raises(NoResources, match="no second node can keep the replica"):
        await ctrl.instances.run(admin(ctrl), req(node="a", ha=True))


def test_the_ec2_tag_asks_for_ha_and_a_bad_value_is_refused() -> None:
    assert _ha_tag({"corral:ha": "true"}) is True
    assert _ha_tag({"corral:ha": "False"}) is False
    assert _ha_tag({"Name": "x"}) is False
    with pytest.raises(Ec2Error) as err:
        _ha_tag({"corral:ha": "yes"})
    assert err.value.code == "InvalidParameterValue"


def test_a_service_file_may_ask_for_ha() -> None:
    assert Service(image="tiny", run="sleep 1", ha=True).ha
    assert not Service(image="tiny").ha


# -- replication and failover over fake nodes ------------------------------------------------
async def _ha(ctrl: Controller) -> Instance:
    inst = await run(ctrl, node="a", ha=True)
    await ctrl.replicas.reconcile()
    return await reload(ctrl, inst.id)


async def test_the_reconciler_replicates_and_records_the_replicas_state(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _ha(ctrl)
    assert inst.replica_state == "in-sync" and inst.secondary_node_id == "node-b"
    assert inst.id in fake_node(ctrl, "b").replicas  # the secondary serves the replica
    assert ("replica_mirror", inst.id) in fake_node(ctrl, "a").calls
    assert inst.id not in fake_node(ctrl, "b").running  # nothing runs there
    shown = await ctrl.instances.get(admin(ctrl), inst.id)
    view = views.instance(shown)
    assert view.ha and view.replica_state == "in-sync" and view.secondary_node == "node-b"


async def test_a_degraded_replica_is_set_up_again(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _ha(ctrl)
    fake_node(ctrl, "a").mirrors[inst.id] = "degraded"  # the secondary's link failed
    fake_node(ctrl, "b").calls.clear()
    await ctrl.replicas.reconcile()
    assert ("replica_serve", inst.id) in fake_node(ctrl, "b").calls
    assert (await reload(ctrl, inst.id)).replica_state == "in-sync"


async def test_a_replica_whose_secondary_is_unreachable_moves_to_a_new_one(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {"memory": 4 << 30}})
    inst = await _ha(ctrl)
    assert inst.secondary_node_id == "node-b"
    fake_node(ctrl, "a").mirrors[inst.id] = "degraded"
    ctrl.cluster.unreachable.add("node-b")
    await ctrl.replicas.reconcile()
    row = await reload(ctrl, inst.id)
    assert row.secondary_node_id == "node-c" and row.replica_state == "in-sync"
    assert inst.id in fake_node(ctrl, "c").replicas


async def test_a_dead_nodes_ha_instance_runs_on_its_secondary_with_its_identity(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {"memory": 4 << 30}})
    inst = await _ha(ctrl)
    plain = await run(ctrl, node="a")
    claimed_a = await claimed_memory(ctrl, "a")
    ctrl.cluster.unreachable.add("node-a")
    ops = await ctrl.replicas.fail_over_node("node-a")
    assert [o.target_id for o in ops] == [inst.id]  # only the HA instance
    done = await finish(ctrl, ops[0])
    assert done.status == "succeeded", done.error
    row = await reload(ctrl, inst.id)
    assert row.node_id == "node-b" and row.state == "running"
    assert (row.private_ip, row.mac, row.name) == (inst.private_ip, inst.mac, inst.name)
    assert row.pid == fake_node(ctrl, "b").running[inst.id]
    assert fake_node(ctrl, "b").specs[inst.id].mac == inst.mac
    assert fake_node(ctrl, "b").specs[inst.id].address == inst.private_ip
    async with ctrl.store.read() as s:
        net = await s.get(Network, row.network_id)
        assert net is not None and net.node_id == "node-b"
    assert await claimed_memory(ctrl, "a") == claimed_a - inst.claim_memory
    assert await claimed_memory(ctrl, "b") == inst.claim_memory
    assert (await reload(ctrl, plain.id)).node_id == "node-a"  # not HA: not moved
    # the next pass gives it a new secondary (not the dead node) and resyncs
    await ctrl.replicas.reconcile()
    row = await reload(ctrl, inst.id)
    assert row.secondary_node_id == "node-c" and row.replica_state == "in-sync"


async def test_an_ha_instance_of_a_vpc_subnet_has_its_network_on_its_secondary(
    cluster: Cluster,
) -> None:
    """The subnet's network is made on the secondary for the replica and kept there (no
    instance runs on it: its replica's is the reason), so the failover starts the instance
    there on it, with its address."""
    ctrl = await cluster({"a": {}, "b": {}})
    me = admin(ctrl)
    vpc = await ctrl.vpcs.create(me, "10.4.0.0/16")
    sub = await ctrl.vpcs.create_subnet(me, vpc.id, "10.4.1.0/24")
    inst = await run(ctrl, node="a", ha=True, subnet=sub.id, address="10.4.1.50")
    await ctrl.replicas.reconcile()
    inst = await reload(ctrl, inst.id)
    assert inst.replica_state == "in-sync" and inst.secondary_node_id == "node-b"
    async with ctrl.store.read() as s:
        there = await s.scalar(
            select(Network).where(Network.node_id == "node-b", Network.name == sub.id)
        )
    assert there is not None and there.id in fake_node(ctrl, "b").hosts
    await ctrl.networks.sync(there.id)  # pushed again (another change): still kept
    assert there.id in fake_node(ctrl, "b").hosts
    ctrl.cluster.unreachable.add("node-a")
    (op,) = await ctrl.replicas.fail_over_node("node-a")
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    row = await reload(ctrl, inst.id)
    assert (row.node_id, row.network_id, row.private_ip) == ("node-b", there.id, "10.4.1.50")


async def test_a_failover_resumed_after_a_crash_starts_one_copy(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _ha(ctrl)
    ctrl.cluster.unreachable.add("node-a")
    # the controller died after the secondary started it, before the record moved
    pid = await fake_node(ctrl, "b").replica_promote(fake_node(ctrl, "b").replicas[inst.id])
    async with ctrl.store.write() as s:
        op = ctrl.ops.new(
            OP,
            account_id=inst.account_id,
            target_kind="instance",
            target_id=inst.id,
            params={"from": "node-a", "to": "node-b", "phase": "starting"},
        )
        s.add(op)
    ctrl.ops.start(op)
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    row = await reload(ctrl, inst.id)
    assert row.node_id == "node-b" and row.pid == pid
    assert fake_node(ctrl, "b").running[inst.id] == pid  # the copy that ran: not started again
    # and once more: the record has moved, nothing is done again
    again = await ctrl.replicas.fail_over_node("node-a")
    assert again == []


async def test_failover_without_a_replica_on_the_secondary_fails_and_moves_nothing(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await run(ctrl, node="a", ha=True)  # never replicated
    ctrl.cluster.unreachable.add("node-a")
    (op,) = await ctrl.replicas.fail_over_node("node-a")
    done = await finish(ctrl, op)
    assert done.status == "failed" and "no replica" in str(done.error)
    assert (await reload(ctrl, inst.id)).node_id == "node-a"


class Silent:
    """A node whose agent does not answer (killed)."""

    async def heartbeat(self) -> str:
        raise EnvironmentProblem("node is unreachable", reason="node-unreachable")


async def test_a_node_declared_dead_fails_its_ha_instances_over(cluster: Cluster) -> None:
    """Not at "unreachable": only once the lease expired past the fence margin (the node has
    fenced itself by then), and the moved record is one generation on."""
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _ha(ctrl)
    async with ctrl.store.write() as s:  # a joined node (a TLS address): leases apply
        await s.execute(
            update(Node).where(Node.name == "a").values(address="https://192.0.2.11:8774")
        )
    ctrl.settings = dataclasses.replace(ctrl.settings, lease_timeout=0.5, fence_margin=60)
    await ctrl.cluster.heartbeat_once()
    ctrl.nodes["node-a"] = Silent()  # type: ignore[assignment]
    await asyncio.sleep(1.1)  # the database's clock has whole seconds on SQLite
    await ctrl.cluster.heartbeat_once()
    assert not ctrl.cluster.reachable("node-a") and "node-a" not in ctrl.cluster.dead
    await asyncio.sleep(0.5)
    assert (await reload(ctrl, inst.id)).node_id == "node-a"  # unreachable is not dead
    ctrl.settings = dataclasses.replace(ctrl.settings, fence_margin=0.5)
    await asyncio.sleep(1.1)
    await ctrl.cluster.heartbeat_once()
    assert "node-a" in ctrl.cluster.dead
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (row := await reload(ctrl, inst.id)).node_id != "node-b":
        assert loop.time() < deadline, "not failed over"
        await asyncio.sleep(0.05)
    assert row.state == "running" and inst.id in fake_node(ctrl, "b").running
    assert row.generation == inst.generation + 1


async def test_an_ha_instance_is_not_migrated_live(cluster: Cluster) -> None:
    # the migration's mirrors share the job names of the replica's: refused, not confused
    ctrl = await cluster({"a": {}, "b": {}})
    inst = await _ha(ctrl)
    with pytest.raises(WrongState, match="highly available"):
        await ctrl.migrations.request(admin(ctrl), inst.name, to="b")
