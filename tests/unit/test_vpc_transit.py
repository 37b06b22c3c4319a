"""A VPC namespace's uplink into its node's namespace (issue 12): the transit /30s handed out,
and the nft rules that let only outbound flows (and their answers) cross it."""

from __future__ import annotations

import ipaddress
import json

import pytest
from sqlalchemy import update

from corral.controller.networks import transit_uplink, vpc_bridge
from corral.errors import Invalid
from corral.node.net import firewall
from corral.node.spec import NetworkSpec, PolicySpec, transit_slot
from corral.store.models import Network, Node
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, fake_node, run


def test_transit_slots_are_distinct_link_local_30s_apart_from_the_metadata_address() -> None:
    slots = [transit_slot(i) for i in range(64 * 200)]
    assert len(set(slots)) == len(slots)
    meta = ipaddress.IPv4Address("169.254.169.254")
    for s in slots:
        net = ipaddress.IPv4Network(s)
        assert net.prefixlen == 30 and net.subnet_of(ipaddress.IPv4Network("169.254.0.0/16"))
        assert meta not in net and net.network_address.packed[2] not in (0, 169)
    up = transit_uplink(slots[0], "corral-x")
    assert (up.gateway, up.address, up.peer_netns) == ("169.254.1.1", "169.254.1.2", "corral-x")
    assert len(vpc_bridge("subnet-0123456789abcdef0")) <= 15


def _rules(policy: PolicySpec, chain: str) -> list[str]:
    cmds = firewall.render(policy)
    return [
        json.dumps(c["add"]["rule"]["expr"])
        for c in cmds
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain
    ]


def _policy(vpc: bool) -> PolicySpec:
    from corral.node.spec import UplinkSpec

    net = NetworkSpec(
        id="net-1",
        namespace="ns",
        bridge="br-1",
        cidr="10.0.1.0/24",
        gateway="10.0.1.1",
        domain="corral.internal",
        vpc=vpc,
    )
    up = UplinkSpec(cidr="169.254.1.0/30", address="169.254.1.2", gateway="169.254.1.1")
    return PolicySpec(network=net, uplink=up)


def test_the_nodes_namespace_lets_vpc_flows_out_by_its_uplink_only_and_none_in() -> None:
    node = _policy(vpc=False)
    fwd, inp = _rules(node, "transit"), _rules(node, "transit_in")
    assert any('"cx-*"' in r and '"!="' in r and '"cx0"' in r and "drop" in r for r in fwd)
    assert any('"oifname"' in r and '"cx-*"' in r and '"new"' in r for r in fwd)
    assert any('"iifname"' in r and '"cx-*"' in r and '"new"' in r for r in inp)
    post = _rules(node, "nat_post")
    assert any('"169.254.0.0"' in r and "masquerade" in r for r in post)


def test_a_vpc_namespace_takes_no_new_flow_from_its_uplink() -> None:
    vpc = _policy(vpc=True)
    for chain in ("transit", "transit_in"):
        rules = _rules(vpc, chain)
        assert len(rules) == 1 and '"cx0"' in rules[0] and '"new"' in rules[0], rules
    assert not any('"169.254.0.0"' in r for r in _rules(vpc, "nat_post"))
    assert any('"10.0.1.0"' in r and "masquerade" in r for r in _rules(vpc, "nat_post"))


async def test_a_vpc_subnet_spans_nodes_as_its_own_segment_one_subnet_per_vpc_per_node(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}, "b": {}, "c": {}})
    async with ctrl.store.write() as s:
        for name, ip in (("a", "192.0.2.11"), ("b", "192.0.2.12")):
            await s.execute(
                update(Node).where(Node.name == name).values(address=f"https://{ip}:8774")
            )
    me = admin(ctrl)
    vpc = await ctrl.vpcs.create(me, "10.5.0.0/16")
    one = await ctrl.vpcs.create_subnet(me, vpc.id, "10.5.1.0/24")
    two = await ctrl.vpcs.create_subnet(me, vpc.id, "10.5.2.0/24")
    first = await run(ctrl, node="a", subnet=one.id, address="10.5.1.20")
    assert first.private_ip == "10.5.1.20"
    # the same subnet on another node: one segment (its own VNI, in the VPC's namespaces),
    # one IPAM
    again = await run(ctrl, node="b", subnet=one.id)
    assert again.private_ip not in (None, first.private_ip)
    seg_a = [o for o in fake_node(ctrl, "a").overlays.values()]
    seg_b = [o for o in fake_node(ctrl, "b").overlays.values()]
    assert len(seg_a) == len(seg_b) == 1 and seg_a[0].vni == seg_b[0].vni
    assert seg_a[0].namespace.endswith(vpc.id) and seg_a[0].bridge != "cbr0"
    assert seg_a[0].entries == {again.mac: "192.0.2.12"}
    assert seg_b[0].entries == {first.mac: "192.0.2.11"}
    # a default-subnet instance on both nodes: another segment, another VNI
    await run(ctrl, node="a")
    await run(ctrl, node="b")
    vnis = {o.vni for o in fake_node(ctrl, "a").overlays.values()}
    assert len(vnis) == 2, fake_node(ctrl, "a").overlays
    # another subnet of the VPC on the same node: refused; on another node: fine
    with pytest.raises(Invalid) as err:
        await run(ctrl, node="a", subnet=two.id)
    assert "does not route between two subnets" in err.value.message
    other = await run(ctrl, node="c", subnet=two.id)
    assert str(other.private_ip).startswith("10.5.2.")
    nets = {n for node in "abc" for n in fake_node(ctrl, node).policies}
    async with ctrl.store.read() as s:
        rows = [await s.get(Network, n) for n in nets]
    vpc_rows = [r for r in rows if r is not None and r.transit is not None]
    assert sorted(r.name for r in vpc_rows) == sorted([one.id, one.id, two.id])
    assert {r.namespace.endswith(vpc.id) for r in vpc_rows} == {True}
    assert len({r.transit for r in vpc_rows if r.node_id == "node-a"}) == 1
