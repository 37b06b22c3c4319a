"""A subnet's segment across two hosts over VXLAN (corral/node/net/overlay.py), with the
multi-node test LAN (tests/cluster.py): each host has a data-plane namespace with the segment's
bridge, the VXLAN device made on the host's underlay and moved in, and "guests" (namespaces on
veths, standing for VMs: no VM is booted) with the guest MTU. Forwarding entries are Corral's
(learning off): guests reach each other only once the entries are written, ARP included, and a
second segment (another account's VPC, the same CIDR and addresses, another VNI) exchanges no
packet with the first."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from corral import config
from corral.node.agent import NodeAgent
from corral.node.client import NodeClient
from corral.node.net import overlay
from corral.node.remote import connect_node
from corral.node.spec import OverlaySpec
from tests.cluster import HOST_IFACE, lan
from tests.unit.helpers import node_server


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv}: {r.stdout}{r.stderr}")
    return r


def _ping(ns: str, address: str, count: int = 2) -> bool:
    r = _run(
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        str(count),
        "-i",
        "0.2",
        "-W",
        "2",
        address,
        check=False,
    )
    return r.returncode == 0


def _reaches(ns: str, address: str) -> bool:
    """Pings within 15 s (a guest whose ARP failed a moment ago retries; so does this)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _ping(ns, address, count=1):
            return True
        time.sleep(0.5)
    return False


def _mac(ns: str, dev: str) -> str:
    out = _run("ip", "-n", ns, "-json", "link", "show", "dev", dev).stdout
    return str(json.loads(out)[0]["address"])


@contextlib.contextmanager
def _namespaces(names: list[str]) -> Iterator[None]:
    try:
        for n in names:
            _run("ip", "netns", "add", n)
        yield
    finally:
        for n in names:
            _run("ip", "netns", "delete", n, check=False)


def _guest(dp: str, guest: str, bridge: str, port: str, address: str) -> str:
    """A veth from the data-plane bridge to the guest namespace; the guest's MAC."""
    _run(
        "ip", "-n", dp, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", guest
    )
    _run("ip", "-n", dp, "link", "set", port, "master", bridge, "up")
    mtu = str(overlay.guest_mtu())
    _run("ip", "-n", guest, "link", "set", "eth0", "mtu", mtu, "up")
    _run("ip", "-n", guest, "addr", "add", address, "dev", "eth0")
    return _mac(guest, "eth0")


def _rx_packets(ns: str) -> int:
    out = _run("ip", "-n", ns, "-s", "-json", "link", "show", "dev", HOST_IFACE).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def _bridge_static(ns: str, dev: str) -> set[str]:
    """The MACs the bridge sends to ``dev`` by a static entry (not learnt, not its own)."""
    out = _run("bridge", "-n", ns, "-json", "fdb", "show", "dev", dev).stdout
    return {
        e["mac"]
        for e in json.loads(out or "[]")
        if "master" in e and e.get("state") == "static" and not e.get("dst")
    }


async def test_guests_of_one_segment_on_two_hosts_reach_each_other_and_not_another_vpc(
    tmp_path: Path,
) -> None:
    # the agent's overlay calls, across the declared wire (unix socket) as the controller
    # makes them; one agent serves both "hosts" here (each call names its namespaces)
    agent = NodeAgent(config.load(tmp_path / "agent"))
    async with node_server(agent) as url:
        client, remote = connect_node(url)
        try:
            await _scenario(client)
        finally:
            await remote.aclose()


async def _scenario(client: NodeClient) -> None:
    with lan(3) as net:
        h1, h2, h3 = net.hosts
        tag = net.tag
        dps = [f"ccl{tag}-dp{i}" for i in (1, 2)]
        # guests: account A (VNI 100) on both hosts; account B (VNI 200) with the same CIDR
        # and the same addresses on both hosts
        ga = [f"ccl{tag}-a{i}" for i in (1, 2)]
        gb = [f"ccl{tag}-b{i}" for i in (1, 2)]
        with _namespaces(dps + ga + gb):
            macs_a = [
                _guest(dps[i], ga[i], "br100", f"pa{i}", f"10.31.0.{i + 11}/24")
                if _run("ip", "-n", dps[i], "link", "add", "br100", "type", "bridge")
                else ""
                for i in range(2)
            ]
            macs_b = [
                _guest(dps[i], gb[i], "br200", f"pb{i}", f"10.31.0.{i + 11}/24")
                if _run("ip", "-n", dps[i], "link", "add", "br200", "type", "bridge")
                else ""
                for i in range(2)
            ]
            hosts = [h1, h2]

            def seg(i: int, vni: int, peers: list[str], entries: dict[str, str]) -> OverlaySpec:
                return OverlaySpec(
                    namespace=dps[i],
                    bridge=f"br{vni}",
                    vni=vni,
                    local=hosts[i].address,
                    underlay_namespace=hosts[i].netns,
                    underlay_dev=HOST_IFACE,
                    peers=peers,
                    entries=entries,
                )

            async def converge(with_entries: bool) -> None:
                for i in range(2):
                    other = hosts[1 - i].address
                    for vni, macs in ((100, macs_a), (200, macs_b)):
                        entries = {macs[1 - i]: other} if with_entries else {}
                        peers = [other] if with_entries else []
                        await client.overlay_ensure(seg(i, vni, peers, entries))

            # the segment without Corral's entries: learning is off, nothing crosses
            await converge(False)
            assert not _ping(ga[0], "10.31.0.12", count=1)
            # with them: A's guests reach each other both ways (ARP resolved over the overlay)
            await converge(True)
            await converge(True)  # idempotent: nothing doubled
            table = await overlay.fdb(dps[0], 100)
            assert table == {overlay.ZERO_MAC: [h2.address], macs_a[1]: [h2.address]}
            # the bridge sends frames for the remote guest to the tunnel only: a static entry,
            # so they are never flooded to local ports as unknown unicast
            assert _bridge_static(dps[0], "vx100") == {macs_a[1]}
            assert _reaches(ga[0], "10.31.0.12") and _reaches(ga[1], "10.31.0.11")
            # a full-size guest packet fits the overlay (MTU 1450, DF set)
            size = str(overlay.guest_mtu() - 28)
            r = _run(
                "ip",
                "netns",
                "exec",
                ga[0],
                "ping",
                "-c",
                "1",
                "-M",
                "do",
                "-s",
                size,
                "-W",
                "2",
                "10.31.0.12",
                check=False,
            )
            assert r.returncode == 0, r.stdout + r.stderr
            # a guest being live-migrated (to host 3, say): host 1 sends its frames to every
            # peer, as broadcast (no tunnel entry for it; the bridge's entry kept, so local
            # guests do not get them): both hosts get every one, none lost while the guest is
            # paused on one and not yet running on the other
            moving = seg(0, 100, [h2.address, h3.address], {})
            moving.spread = [macs_a[1]]
            await client.overlay_ensure(moving)
            await client.overlay_ensure(moving)  # idempotent
            table = await overlay.fdb(dps[0], 100)
            assert macs_a[1] not in table and sorted(table[overlay.ZERO_MAC]) == sorted(
                [h2.address, h3.address]
            ), table
            assert _bridge_static(dps[0], "vx100") == {macs_a[1]}
            before = _rx_packets(h3.netns)
            _run("ip", "netns", "exec", ga[0], "ping", "-c", "20", "-i", "0.05", "10.31.0.12")
            assert _rx_packets(h3.netns) - before >= 20  # every echo request reached host 3 too
            await converge(True)  # moved back (or rolled back): host 2 only
            assert (await overlay.fdb(dps[0], 100)) == {
                overlay.ZERO_MAC: [h2.address],
                macs_a[1]: [h2.address],
            }
            assert _reaches(ga[0], "10.31.0.12")
            # B: the same addresses in its own VPC reach each other, and never A's guests
            assert _reaches(gb[0], "10.31.0.12") and _reaches(gb[1], "10.31.0.11")
            for ns in gb:
                _run("ip", "-n", ns, "neigh", "flush", "all")
            neigh_a = _run("ip", "-n", ga[1], "-json", "neigh", "show").stdout
            assert macs_b[0] not in neigh_a  # no ARP of B's ever reached A
            # B's broadcast (ARP for an address only A has) is answered by nobody
            _run("ip", "-n", ga[1], "addr", "add", "10.31.0.99/24", "dev", "eth0")
            assert not _ping(gb[0], "10.31.0.99", count=1)
            assert _reaches(ga[0], "10.31.0.99")
            # a stale entry goes: host 1's view after A's guest on host 2 left
            await client.overlay_ensure(seg(0, 100, [h2.address], {}))
            assert await overlay.fdb(dps[0], 100) == {overlay.ZERO_MAC: [h2.address]}
            assert _bridge_static(dps[0], "vx100") == set()
            await client.overlay_remove(dps[0], 100)
            assert "vx100" not in _run("ip", "-n", dps[0], "link").stdout
