"""Health checks of an instance in a non-default VPC's subnet run in the VPC's namespace on its
node (the node's own namespace has no route into it): the controller names it, and the agent
checks from there, and only from a namespace of its own VPCs."""

from __future__ import annotations

import uuid

import pytest

from corral.config import Settings
from corral.controller import health
from corral.errors import Invalid
from corral.node.agent import NodeAgent
from corral.node.net import netns
from corral.node.spec import HealthCheck
from corral.proc import arun
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, fake_node, run


async def test_the_controller_checks_a_vpc_instance_from_its_vpcs_namespace(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}})
    me = admin(ctrl)
    vpc = await ctrl.vpcs.create(me, "10.7.0.0/16")
    sub = await ctrl.vpcs.create_subnet(me, vpc.id, "10.7.1.0/24")
    inside = await run(ctrl, node="a", subnet=sub.id, address="10.7.1.40")
    plain = await run(ctrl, node="a")
    for inst in (inside, plain):
        assert await health.wait(ctrl, inst, str(inst.private_ip), HealthCheck(), 5) == ""
    seen = fake_node(ctrl, "a").checked_from
    assert seen["10.7.1.40"].endswith(f"-{vpc.id}") and seen[str(plain.private_ip)] == ""


async def test_the_agent_checks_from_its_vpc_namespace_and_no_other(settings: Settings) -> None:
    agent = NodeAgent(settings)
    own = settings.namespace
    with pytest.raises(Invalid) as err:
        await agent.health_check("10.0.0.1", HealthCheck(), "someone-elses")
    assert err.value.field == "namespace"
    vpc_ns = f"{own}-vpc-{uuid.uuid4().hex[:8]}"
    made: list[str] = []
    try:
        # the node's own namespace, as on a node: no route into its VPC namespaces
        for ns in (own, vpc_ns):
            await arun(["ip", "netns", "add", ns])
            made.append(ns)
            await arun(["ip", "-n", ns, "link", "set", "lo", "up"])
        address = "10.7.1.40"  # the instance's, answering in the VPC's namespace only
        await arun(["ip", "-n", vpc_ns, "addr", "add", f"{address}/32", "dev", "lo"])
        listener = netns.socket_in(vpc_ns)
        with listener:
            listener.bind((address, 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            check = HealthCheck(port=port, timeout=2)
            assert await agent.health_check(address, check, vpc_ns) == ""
            assert await agent.health_check(address, check) == (
                f"{address}:{port} does not accept connections (network is unreachable)"
            )
        closed = await agent.health_check(address, HealthCheck(port=port, timeout=2), vpc_ns)
        assert closed == f"{address}:{port} does not accept connections (connection refused)"
    finally:
        for ns in made:
            await arun(["ip", "netns", "del", ns], check=False)
