"""High availability, the controller's half (the nodes' half runs real QEMU in
tests/integration/test_ha.py): `ha` on a launch stores a secondary node chosen by the scheduler
(never the primary's, another zone when there is one), and is refused clearly without one."""

from __future__ import annotations

import pytest

from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.instances import _ha_tag
from corral.appliances.spec import Service
from corral.errors import NoResources
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, req, run


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
