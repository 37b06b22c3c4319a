"""The routes and proxy-ARP entries a node's namespace keeps for the elastic IPs of instances in
its VPC namespaces (``uplink.set_routed``), in a real namespace of the test's own: every policy
push calls it, so a push that changes nothing must issue nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from corral.node.net import uplink
from corral.node.net.firewall import UPLINK_DEV
from corral.node.spec import RoutedPublic
from corral.proc import arun

VPC_A, VPC_B = "corral-t-vpc-a", "corral-t-vpc-b"  # only their transit veths' names are used


@pytest.fixture
async def node_ns() -> AsyncIterator[str]:
    """A namespace standing for the node's: ``cx0`` and a transit veth for each of two VPCs
    (each a veth pair inside it, so nothing leaves it), the transits on 169.254.1.0/29."""
    name = f"corral-t-{uuid.uuid4().hex[:8]}"
    await arun(["ip", "netns", "add", name])
    try:
        for dev in (UPLINK_DEV, uplink.peer_name(VPC_A), uplink.peer_name(VPC_B)):
            await arun(["ip", "-n", name, "link", "add", dev, "type", "veth", "peer", f"{dev}p"])
            await arun(["ip", "-n", name, "link", "set", dev, "up"])
            await arun(["ip", "-n", name, "link", "set", f"{dev}p", "up"])
        for dev, addr in ((VPC_A, "169.254.1.1/29"), (VPC_B, "169.254.2.1/29")):
            await arun(["ip", "-n", name, "addr", "add", addr, "dev", uplink.peer_name(dev)])
        yield name
    finally:
        await arun(["ip", "netns", "del", name], check=False)


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every argv set_routed runs (still run for real)."""
    seen: list[list[str]] = []

    async def recording(argv: Sequence[str], **kw: Any) -> str:
        seen.append(list(argv))
        return await arun(argv, **kw)

    monkeypatch.setattr(uplink, "arun", recording)
    return seen


async def _state(ns: str) -> tuple[dict[str, tuple[str, str]], set[str]]:
    routes = json.loads(
        await arun(["ip", "-n", ns, "-json", "route", "show", "proto", uplink.ROUTED_PROTO])
    )
    proxied = json.loads(
        await arun(["ip", "-n", ns, "-json", "neigh", "show", "proxy", "dev", UPLINK_DEV])
    )
    return {r["dst"]: (r["gateway"], r["dev"]) for r in routes}, {e["dst"] for e in proxied}


def _changes(seen: list[list[str]]) -> list[list[str]]:
    return [argv for argv in seen if {"replace", "del"} & set(argv)]


async def test_a_second_push_of_the_same_routed_addresses_changes_nothing(
    node_ns: str, commands: list[list[str]]
) -> None:
    routed = [
        RoutedPublic(public_ip="203.0.113.5", via="169.254.1.2", namespace=VPC_A),
        RoutedPublic(public_ip="203.0.113.6", via="169.254.2.2", namespace=VPC_B),
    ]
    await uplink.set_routed(node_ns, routed)
    assert len(_changes(commands)) == 4  # a route and a proxy entry each
    want = (
        {
            "203.0.113.5": ("169.254.1.2", uplink.peer_name(VPC_A)),
            "203.0.113.6": ("169.254.2.2", uplink.peer_name(VPC_B)),
        },
        {"203.0.113.5", "203.0.113.6"},
    )
    assert await _state(node_ns) == want
    commands.clear()
    await uplink.set_routed(node_ns, routed)
    assert _changes(commands) == [] and await _state(node_ns) == want


async def test_a_changed_via_or_transit_is_replaced_and_an_unwanted_address_removed(
    node_ns: str, commands: list[list[str]]
) -> None:
    await uplink.set_routed(
        node_ns,
        [
            RoutedPublic(public_ip="203.0.113.5", via="169.254.1.2", namespace=VPC_A),
            RoutedPublic(public_ip="203.0.113.6", via="169.254.1.2", namespace=VPC_A),
            RoutedPublic(public_ip="203.0.113.7", via="169.254.1.2", namespace=VPC_A),
        ],
    )
    commands.clear()
    await uplink.set_routed(
        node_ns,
        [
            RoutedPublic(public_ip="203.0.113.5", via="169.254.1.3", namespace=VPC_A),  # via
            RoutedPublic(public_ip="203.0.113.6", via="169.254.2.2", namespace=VPC_B),  # moved
        ],
    )
    changes = _changes(commands)
    replaced = [argv[5] for argv in changes if argv[3:5] == ["route", "replace"]]
    assert replaced == ["203.0.113.5/32", "203.0.113.6/32"]
    assert not [argv for argv in changes if argv[3:6] == ["neigh", "replace", "proxy"]]
    assert [argv for argv in changes if "del" in argv] == [
        ["ip", "-n", node_ns, "route", "del", "203.0.113.7", "proto", uplink.ROUTED_PROTO],
        ["ip", "-n", node_ns, "neigh", "del", "proxy", "203.0.113.7", "dev", UPLINK_DEV],
    ]
    assert await _state(node_ns) == (
        {
            "203.0.113.5": ("169.254.1.3", uplink.peer_name(VPC_A)),
            "203.0.113.6": ("169.254.2.2", uplink.peer_name(VPC_B)),
        },
        {"203.0.113.5", "203.0.113.6"},
    )
