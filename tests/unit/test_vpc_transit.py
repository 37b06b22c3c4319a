"""A VPC namespace's uplink into its node's namespace (issue 12): the transit /30s handed out,
and the nft rules that let only outbound flows (and their answers) cross it."""

from __future__ import annotations

import ipaddress
import json

import pytest
from sqlalchemy import update

from corral.controller.networks import transit_uplink, vpc_bridge
from corral.node.net import firewall
from corral.node.spec import NetworkSpec, PolicySpec, RoutedPublic, transit_slot, vxlan_device
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


def test_a_vpc_namespace_takes_no_new_flow_from_its_uplink_but_to_its_elastic_ips() -> None:
    vpc = _policy(vpc=True)
    inp, link_in = _rules(vpc, "transit_in")
    assert '"cx0"' in inp and '"new"' in inp and "drop" in inp
    # forward: a flow its nat_pre mapped to an instance (an elastic IP) is let in, then the
    # instance's groups judge it; every other new flow from the uplink is dropped
    let_in, drop, link_out = _rules(vpc, "transit")
    assert '"cx0"' in let_in and '"dnat"' in let_in and "accept" in let_in, let_in
    assert '"cx0"' in drop and '"new"' in drop and "drop" in drop, drop
    # the router's link to the VPC's other nodes: nothing to the namespace, nothing out
    assert '"vr-*"' in link_in and "drop" in link_in and '"new"' not in link_in
    assert '"vr-*"' in link_out and '"cx0"' in link_out and "drop" in link_out
    assert not any('"169.254.0.0"' in r for r in _rules(vpc, "nat_post"))
    assert any('"10.0.1.0"' in r and "masquerade" in r for r in _rules(vpc, "nat_post"))


def test_the_nodes_namespace_routes_only_the_listed_elastic_ips_into_vpcs() -> None:
    node = _policy(vpc=False)
    node.routed = [RoutedPublic(public_ip="198.51.100.7", via="169.254.1.2", namespace="ns-vpc")]
    cmds = firewall.render(node)
    (eips,) = [
        c["add"]["set"]
        for c in cmds
        if c.get("add", {}).get("set", {}).get("name") == "routed_eips"
    ]
    assert eips["elem"] == ["198.51.100.7"]
    fwd = _rules(node, "transit")
    let_in = [i for i, r in enumerate(fwd) if "@routed_eips" in r]
    drops = [i for i, r in enumerate(fwd) if "drop" in r]
    assert len(let_in) == 1 and let_in[0] < min(drops), fwd
    assert '"iifname"' in fwd[let_in[0]] and '"cx0"' in fwd[let_in[0]]  # from the outside only
    # none listed: an empty set, so nothing gets in
    bare = [
        c["add"]["set"]
        for c in firewall.render(_policy(vpc=False))
        if c.get("add", {}).get("set", {}).get("name") == "routed_eips"
    ]
    assert "elem" not in bare[0]


async def test_an_elastic_ip_of_a_vpc_instance_is_mapped_in_its_vpc_and_routed_by_its_node(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl = await cluster({"a": {}}, uplink="netns:outside")
    me = admin(ctrl)
    vpc = await ctrl.vpcs.create(me, "10.6.0.0/16")
    sub = await ctrl.vpcs.create_subnet(me, vpc.id, "10.6.1.0/24")
    inst = await run(ctrl, node="a", subnet=sub.id, address="10.6.1.20")
    plain = await run(ctrl, node="a")
    eip = await ctrl.elastic_ips.allocate(me)
    other = await ctrl.elastic_ips.allocate(me)
    await ctrl.elastic_ips.associate(me, inst.id, allocation_id=eip.id)
    await ctrl.elastic_ips.associate(me, plain.id, allocation_id=other.id)
    node = fake_node(ctrl, "a")
    async with ctrl.store.read() as s:
        vpc_net = await s.get(Network, inst.network_id)
        node_net = await s.get(Network, plain.network_id)
    assert vpc_net is not None and vpc_net.transit is not None and node_net is not None
    # the VPC's namespace maps it 1:1 to the instance
    ports = {p.instance_id: p for p in node.policies[vpc_net.id].ports}
    assert ports[inst.id].public_ip == eip.public_ip
    # the node's namespace routes it (only it: the default subnet's is mapped there) into
    # the VPC over the VPC's transit veth
    (r,) = node.policies[node_net.id].routed
    assert r.public_ip == eip.public_ip and r.namespace == vpc_net.namespace
    assert r.via == str(ipaddress.IPv4Network(vpc_net.transit).network_address + 2)
    assert {p.public_ip for p in node.policies[node_net.id].ports} == {other.public_ip}
    # a change in the VPC that routes nothing new pushes the VPC's network, not the node's
    pushed: list[str] = []
    real = node.network_policy

    async def counting(pol: PolicySpec) -> None:
        pushed.append(pol.network.id)
        await real(pol)

    monkeypatch.setattr(node, "network_policy", counting)
    await run(ctrl, node="a", subnet=sub.id)
    assert vpc_net.id in pushed and node_net.id not in pushed, pushed
    # taken away, it is routed no more
    await ctrl.elastic_ips.disassociate(me, public_ip=eip.public_ip)
    assert node.policies[node_net.id].routed == []
    assert [p.public_ip for p in node.policies[vpc_net.id].ports] == [None, None]


async def test_a_vpc_subnet_spans_nodes_as_its_own_segment_and_one_router_joins_its_subnets(
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
    # another subnet of the VPC on the same node joins the VPC's namespace there; on a
    # third node (no underlay address: no link) too
    near = await run(ctrl, node="a", subnet=two.id)
    other = await run(ctrl, node="c", subnet=two.id)
    assert str(other.private_ip).startswith("10.5.2.")
    assert str(near.private_ip).startswith("10.5.2.")
    nets = {n for node in "abc" for n in fake_node(ctrl, node).policies}
    async with ctrl.store.read() as s:
        rows = [await s.get(Network, n) for n in nets]
    vpc_rows = [r for r in rows if r is not None and r.transit is not None]
    assert sorted(r.name for r in vpc_rows) == sorted([one.id, one.id, two.id, two.id])
    assert {r.namespace.endswith(vpc.id) for r in vpc_rows} == {True}
    assert len({r.transit for r in vpc_rows if r.node_id == "node-a"}) == 1
    # one rule set on a for both subnets there: ports of both, both bridges
    a_pols = [p for p in fake_node(ctrl, "a").policies.values() if p.network.vpc]
    assert {n.id for n in a_pols[0].networks} == {n.id for n in a_pols[-1].networks}
    assert {p.address for p in a_pols[-1].ports} == {first.private_ip, near.private_ip}
    assert len({n.bridge for n in a_pols[-1].networks}) == 2
    # the VPC's routers: a and b (with underlay addresses) are linked, each routing the
    # other's instances to its router MAC; a's guard lets the link's VXLAN in; c (no
    # underlay address) routes between its subnets only
    ra, rb = fake_node(ctrl, "a").routers, fake_node(ctrl, "b").routers
    (ra_spec,), (rb_spec,) = ra.values(), rb.values()
    assert ra_spec.link is not None and rb_spec.link is not None
    assert ra_spec.link.vni == rb_spec.link.vni and ra_spec.cidr == "10.5.0.0/16"
    assert ra_spec.link.entries == {rb_spec.mac: "192.0.2.12"} and ra_spec.mac != rb_spec.mac
    assert ra_spec.routes == {again.private_ip: rb_spec.mac}
    assert rb_spec.routes == {first.private_ip: ra_spec.mac, near.private_ip: ra_spec.mac}
    assert vxlan_device(ra_spec.link.vni) in a_pols[-1].overlay_devs
    (rc_spec,) = fake_node(ctrl, "c").routers.values()
    assert rc_spec.link is None and rc_spec.routes == {}
