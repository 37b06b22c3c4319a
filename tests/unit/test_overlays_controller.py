"""The controller drives subnets across nodes (controller/overlays.py) over fake nodes; the
data plane itself is shown with real VMs in tests/integration/test_vpc_span.py and with real
packets in test_overlay.py.

Shown: one IPAM across the nodes of a subnet; each hosting node gets the segment (one VNI from
the store, the other nodes as peers, one forwarding entry per remote instance) and loses it
when it hosts no more; entries follow a stop, a move ahead of the store, and an agent that
restarted gets them again; DNS names and group members of the other nodes reach each node,
DHCP only for its own instances, and the guard lets the VXLAN device in."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from corral.controller.service import Controller
from corral.node.fake import FakeNode
from corral.node.net import dnsmasq, firewall, overlay
from corral.node.spec import OverlaySpec
from corral.store.models import Node
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, fake_node, finish, run

ADDR = {"a": "192.0.2.11", "b": "192.0.2.12", "c": "192.0.2.13"}


async def _three(cluster: Cluster) -> Controller:
    ctrl = await cluster({n: {} for n in ADDR})
    async with ctrl.store.write() as s:
        for name, ip in ADDR.items():
            await s.execute(
                update(Node).where(Node.name == name).values(address=f"https://{ip}:8774")
            )
    return ctrl


def _segment(node: FakeNode) -> OverlaySpec | None:
    assert len(node.overlays) <= 1, node.overlays
    return next(iter(node.overlays.values()), None)


async def test_a_subnet_on_two_nodes_is_one_segment_driven_from_the_store(
    cluster: Cluster,
) -> None:
    ctrl = await _three(cluster)
    one = await run(ctrl, node="a", name="one")
    assert all(_segment(fake_node(ctrl, n)) is None for n in ADDR)  # one node: no tunnel
    two = await run(ctrl, node="b", name="two")
    assert one.private_ip != two.private_ip  # one IPAM across the subnet's nodes

    sa, sb = _segment(fake_node(ctrl, "a")), _segment(fake_node(ctrl, "b"))
    assert sa is not None and sb is not None and _segment(fake_node(ctrl, "c")) is None
    assert sa.vni == sb.vni >= 100
    assert (sa.local, sa.peers, sa.entries) == (ADDR["a"], [ADDR["b"]], {two.mac: ADDR["b"]})
    assert (sb.local, sb.peers, sb.entries) == (ADDR["b"], [ADDR["a"]], {one.mac: ADDR["a"]})

    # names of both everywhere, DHCP only for the node's own
    net_a = next(iter(fake_node(ctrl, "a").policies))
    hosts = {h.address: h for h in fake_node(ctrl, "a").hosts[net_a]}
    assert hosts[str(one.private_ip)].dhcp and not hosts[str(two.private_ip)].dhcp
    assert any(n.startswith("two.") for n in hosts[str(two.private_ip)].names)
    # the other node's instance is a member of its group here; the guard takes the tunnel
    pol = fake_node(ctrl, "a").policies[net_a]
    assert [(m.instance_id, m.address) for m in pol.remote] == [(two.id, two.private_ip)]
    assert pol.remote[0].groups and pol.overlay_devs == [f"vx{sa.vni}"]
    doc = str(firewall.render(pol))
    assert f"vx{sa.vni}" in doc and str(two.private_ip) in doc

    # a move ahead of the store (migration switch-over, failover): entries follow at once
    await ctrl.overlays.move(one.id, "node-c")
    sb, sc = _segment(fake_node(ctrl, "b")), _segment(fake_node(ctrl, "c"))
    assert sb is not None and sc is not None and _segment(fake_node(ctrl, "a")) is None
    assert sb.entries == {one.mac: ADDR["c"]} and sc.entries == {two.mac: ADDR["b"]}
    await ctrl.overlays.done_moving(one.id)  # rolled back: the store rules again
    sb = _segment(fake_node(ctrl, "b"))
    assert sb is not None and sb.entries == {one.mac: ADDR["a"]}
    assert _segment(fake_node(ctrl, "c")) is None

    # an agent that restarted (its kernel state gone) gets its segment again
    fake_node(ctrl, "a").overlays.clear()
    ctrl.overlays.forget("node-a")
    await ctrl.overlays.sync()
    assert _segment(fake_node(ctrl, "a")) == sa

    # stopped: the subnet is on one node again, the tunnel goes on both
    _, op = await ctrl.instances.stop(admin(ctrl), two.id)
    assert op is not None
    assert (await finish(ctrl, op)).status == "succeeded"
    assert _segment(fake_node(ctrl, "a")) is None and _segment(fake_node(ctrl, "b")) is None


async def test_a_migrating_instances_frames_go_to_both_nodes_its_groups_guarding_it_there(
    cluster: Cluster,
) -> None:
    """While a live migration copies memory, the third node sends the guest's frames to every
    peer, so to its node and to the destination (whose paused copy queues them: none lost in the pause); the
    destination guards the arriving tap with the guest's groups (never its elastic IP) before
    the frames come; a rollback undoes both, a switch-over leaves only the destination."""
    ctrl = await _three(cluster)
    one = await run(ctrl, node="a", name="one")
    two = await run(ctrl, node="b", name="two")
    async with ctrl.store.read() as s:
        net_c = (await ctrl.networks.default(s, "node-c")).id
    moves = ctrl.migrations
    await moves._arrive(one.id, "node-c", net_c)
    sa, sb, sc = (_segment(fake_node(ctrl, n)) for n in "abc")
    assert sa is not None and sb is not None and sc is not None  # c hosts the segment now
    # b sends one's frames to every peer, a (where it runs) and c (where it arrives)
    assert (sb.entries, sb.spread, sorted(sb.peers)) == ({}, [one.mac], [ADDR["a"], ADDR["c"]])
    assert (sc.entries, sc.spread) == ({two.mac: ADDR["b"]}, [])  # one arrives here: local
    assert (sa.entries, sa.spread) == ({two.mac: ADDR["b"]}, [])  # one still runs here
    pol = fake_node(ctrl, "c").policies[net_c]
    port = next(p for p in pol.ports if p.instance_id == one.id)
    assert port.groups and port.public_ip is None and port.address == one.private_ip
    assert one.id not in [m.instance_id for m in pol.remote]  # a port here, not a member

    await moves._arrived(one.id, net_c)  # rolled back
    sb = _segment(fake_node(ctrl, "b"))
    assert sb is not None and (sb.entries, sb.spread) == ({one.mac: ADDR["a"]}, [])
    assert _segment(fake_node(ctrl, "c")) is None
    pol = fake_node(ctrl, "c").policies[net_c]
    assert one.id not in [p.instance_id for p in pol.ports]

    await moves._arrive(one.id, "node-c", net_c)
    await ctrl.overlays.move(one.id, "node-c")  # the switch-over: the destination only
    sb = _segment(fake_node(ctrl, "b"))
    assert sb is not None and (sb.entries, sb.spread) == ({one.mac: ADDR["c"]}, [])
    assert one.id in ctrl.overlays.arriving("node-c")  # guarded there until the store moves
    await ctrl.overlays.done_moving(one.id)


async def test_without_an_underlay_address_a_node_is_left_out(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}, "b": {}})  # both "local": no underlay address
    await run(ctrl, node="a", name="one")
    await run(ctrl, node="b", name="two")
    assert not fake_node(ctrl, "a").overlays and not fake_node(ctrl, "b").overlays


def test_dnsmasq_gives_dhcp_to_local_hosts_and_names_to_all(tmp_path: Path) -> None:
    dm = dnsmasq.Dnsmasq(
        namespace="x",
        bridge="cbr0",
        cidr="10.9.0.0/24",
        gateway="10.9.0.1",
        domain="corral.internal",
        directory=tmp_path,
    )
    here = dnsmasq.HostEntry("52:54:00:00:00:01", "10.9.0.10", ("here.a.corral.internal",))
    there = dnsmasq.HostEntry(
        "52:54:00:00:00:02", "10.9.0.11", ("there.a.corral.internal",), zone="a", dhcp=False
    )
    dm._write_hosts([here, there])
    assert (
        tmp_path / "dhcp-hosts"
    ).read_text() == "52:54:00:00:00:01,set:m525400000001,10.9.0.10,infinite\n"
    assert "10.9.0.11 there.a.corral.internal" in (tmp_path / "hosts").read_text()
    assert "m525400000002" not in (tmp_path / "dhcp-opts").read_text()
    assert "--dhcp-option=option:mtu,1450" not in dm.argv()
    dm.mtu = 1450
    assert "--dhcp-option=option:mtu,1450" in dm.argv()


def test_every_node_gives_the_gateway_the_same_mac() -> None:
    assert overlay.gateway_mac("10.88.0.1") == "02:cc:0a:58:00:01"
