"""Pushes of one network's policy to its node never land out of order: a push that read the
store before a change and reached the node after the change's own push would leave the older
policy in the kernel (an elastic IP answering for its old instance) until the next pass."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from corral.node.spec import PolicySpec
from corral.store.models import Network
from tests.unit.ec2.conftest import World


def _ports(policy: PolicySpec) -> set[int | None]:
    return {r.from_port for g in policy.groups for r in g.ingress}


async def test_a_slow_push_of_an_older_state_does_not_land_after_a_newer_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ec2 = world.admin
    await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    await world.settle()
    async with world.ctrl.store.read() as s:
        network_id = await s.scalar(select(Network.id))
    assert network_id is not None
    node = world.node
    deliver = node.network_policy
    slow = asyncio.Event()

    async def network_policy(policy: PolicySpec) -> None:
        if not slow.is_set():  # the first push (the older state) reaches the node late
            slow.set()
            await asyncio.sleep(0.5)
        await deliver(policy)

    monkeypatch.setattr(node, "network_policy", network_policy)
    older = asyncio.create_task(world.ctrl.networks.sync(network_id))
    await slow.wait()  # it has read the store and is on its way
    group = (await ec2.call("DescribeSecurityGroups", GroupNames=["default"]))["SecurityGroups"][0]
    await ec2.call(
        "AuthorizeSecurityGroupIngress",
        GroupId=group["GroupId"],
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 4242,
                "ToPort": 4242,
                "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
            }
        ],
    )
    await older
    assert 4242 in _ports(node.policies[network_id])
