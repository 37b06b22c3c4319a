"""Anti-affinity and capacity over several fake nodes: placement groups (spread, cluster)
through the controller and the REST API, exclusion tags (soft and hard), and the capacity
report with its N+1 verdict."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller import capacity
from corral.controller.scheduler import Policy
from corral.controller.service import Controller
from corral.errors import NoResources, WrongState
from corral.store.models import Instance, Node
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, finish, req

GiB = 1 << 30


async def _run(ctrl: Controller, **fields: Any) -> Instance:
    inst, op = await ctrl.instances.run(admin(ctrl), req(**fields))
    assert (await finish(ctrl, op)).status == "succeeded"
    return inst


async def _report(ctrl: Controller) -> capacity.Report:
    async with ctrl.store.read() as s:
        return await capacity.report(s, Policy.from_settings(ctrl.settings))


@pytest.fixture
async def rest(cluster: Cluster) -> AsyncIterator[tuple[Controller, httpx.AsyncClient]]:
    ctrl = await cluster({"a": {}, "b": {}, "c": {"labels": {"disk": "ssd"}}})
    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    auth = f"Bearer {data['access_key_id']}:{data['secret_access_key']}"
    transport = httpx.ASGITransport(app=create_app(ApiContext(ctrl.settings, ctrl)))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://corral.test", headers={"Authorization": auth}
    ) as c:
        yield ctrl, c


# -- placement groups ---------------------------------------------------------------------------
async def test_a_spread_group_puts_each_member_on_its_own_node(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}}, scheduler_weigher="pack")
    await ctrl.placement_groups.create(admin(ctrl), "web", "spread")
    nodes = {(await _run(ctrl, placement_group="web")).node_id for _ in range(3)}
    assert nodes == {"node-a", "node-b", "node-c"}  # even though pack would stack them
    with pytest.raises(NoResources) as err:
        await ctrl.instances.run(admin(ctrl), req(placement_group="web"))
    assert "3 nodes: 3 already hold an instance of placement group web" in err.value.message
    with pytest.raises(WrongState, match="in use"):
        await ctrl.placement_groups.delete(admin(ctrl), "web")


async def test_a_cluster_group_keeps_members_together_in_one_zone(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"zone": "z1"}, "b": {"zone": "z2"}, "c": {"zone": "z2"}})
    await ctrl.placement_groups.create(admin(ctrl), "db", "cluster")
    first = await _run(ctrl, placement_group="db", node="b")
    for _ in range(3):  # spread weighing would move on to emptier nodes; the group pulls
        assert (await _run(ctrl, placement_group="db")).node_id == first.node_id
    async with ctrl.store.write() as s:
        await s.execute(update(Node).where(Node.name == "b").values(cordoned=True))
    assert (await _run(ctrl, placement_group="db")).node_id == "node-c"  # same zone
    async with ctrl.store.write() as s:
        await s.execute(update(Node).where(Node.name == "c").values(cordoned=True))
    with pytest.raises(NoResources, match="1 is outside the zone of placement group db"):
        await ctrl.instances.run(admin(ctrl), req(placement_group="db"))


# -- exclusion tags -----------------------------------------------------------------------------
async def test_soft_exclusion_tags_keep_equal_values_apart_while_there_is_room(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}, "b": {}}, exclusion_tags="service", scheduler_weigher="pack")
    one = await _run(ctrl, tags={"service": "mail"})
    two = await _run(ctrl, tags={"service": "mail"})
    assert one.node_id != two.node_id  # pack alone would have stacked them
    other = await _run(ctrl, tags={"service": "web"})
    assert other.node_id in (one.node_id, two.node_id)
    third = await _run(ctrl, tags={"service": "mail"})  # soft: shares when it must
    assert third.node_id in ("node-a", "node-b")


async def test_hard_exclusion_tags_refuse_a_shared_node(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}}, exclusion_tags="service,role", exclusion="hard")
    await _run(ctrl, tags={"service": "mail"})
    await _run(ctrl, tags={"role": "db"})
    with pytest.raises(NoResources) as err:
        await ctrl.instances.run(admin(ctrl), req(tags={"service": "mail", "role": "db"}))
    assert "2 nodes: 2 already hold an instance tagged role=db or service=mail" in (
        err.value.message
    )
    await _run(ctrl, tags={"service": "web"})  # other values are free to go anywhere


# -- capacity and N+1 ---------------------------------------------------------------------------
async def test_capacity_counts_what_fits_and_n_plus_one_holds(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"memory": 4 * GiB}, "b": {"memory": 4 * GiB}})
    for _ in range(2):
        await _run(ctrl, instance_type="cr1.medium")  # 1 GiB each, one per node (spread)
    rep = await _report(ctrl)
    by_name = {n.view.name: n for n in rep.nodes}
    assert by_name["a"].view.free_memory(rep.policy) == 3 * GiB
    assert by_name["a"].fits["cr1.large"] == 1 and by_name["a"].fits["cr1.medium"] == 3
    assert rep.fits["cr1.large"] == 2
    assert rep.n_plus_one
    assert [(e.node, e.instances, e.unplaced) for e in rep.evacuations] == [
        ("a", 1, []),
        ("b", 1, []),
    ]


async def test_n_plus_one_names_the_instances_that_would_not_fit(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {"memory": 4 * GiB}, "b": {"memory": 4 * GiB}})
    names = []
    for i in range(4):
        names.append((await _run(ctrl, instance_type="cr1.large", name=f"big{i}")).name)
    rep = await _report(ctrl)
    assert rep.fits["cr1.nano"] == 0 and not rep.n_plus_one
    for e in rep.evacuations:
        assert e.instances == 2 and len(e.unplaced) == 2
    async with ctrl.store.read() as s:
        on_a = set(await s.scalars(select(Instance.name).where(Instance.node_id == "node-a")))
    assert set(next(e for e in rep.evacuations if e.node == "a").unplaced) == on_a


# -- REST ---------------------------------------------------------------------------------------
async def test_rest_placement_groups_and_run_with_placement(
    rest: tuple[Controller, httpx.AsyncClient],
) -> None:
    ctrl, api = rest
    r = await api.post("/v1/placement-groups", json={"name": "web", "strategy": "spread"})
    assert r.status_code == 201, r.text
    assert r.json()["id"].startswith("pg-")
    bad = await api.post("/v1/placement-groups", json={"name": "x", "strategy": "partition"})
    assert bad.status_code == 400
    dup = await api.post("/v1/placement-groups", json={"name": "web"})
    assert dup.status_code == 409
    r = await api.post(
        "/v1/instances",
        json={"image": "tiny", "placement_group": "web", "node_selector": {"disk": "ssd"}},
    )
    assert r.status_code == 202, r.text
    assert r.json()["instance"]["node"] == "node-c"
    assert (await finish(ctrl, await ctrl.ops.get(r.json()["operation"]["id"]))).status == (
        "succeeded"
    )
    shown = (await api.get("/v1/placement-groups/web")).json()
    assert shown["instances"] == [r.json()["instance"]["id"]]
    refused = await api.post(
        "/v1/instances",
        json={"image": "tiny", "placement_group": "web", "node_selector": {"disk": "ssd"}},
    )
    assert refused.status_code == 409
    assert (
        "3 nodes: 2 lack the labels disk=ssd, 1 already holds" in refused.json()["error"]["message"]
    )
    assert (await api.delete("/v1/placement-groups/web")).status_code == 409
    assert [g["name"] for g in (await api.get("/v1/placement-groups")).json()] == ["web"]


async def test_rest_capacity_is_for_admins(rest: tuple[Controller, httpx.AsyncClient]) -> None:
    ctrl, api = rest
    body = (await api.get("/v1/capacity")).json()
    assert [n["name"] for n in body["nodes"]] == ["a", "b", "c"]
    assert body["n_plus_one"] is True and body["fits"]["cr1.micro"] > 0
    acct = await ctrl.accounts.create("tenant")
    key = await ctrl.accounts.create_key(acct.id)
    r = await api.get("/v1/capacity", headers={"Authorization": f"Bearer {key.id}:{key.secret}"})
    assert r.status_code == 403
