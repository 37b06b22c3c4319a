"""A VPC's router in its namespace on a node (issue 12, ``RouterSpec``).

The namespace routes between the VPC's subnets that have a bridge there (each bridge holds
its subnet's gateway address: connected routes). For the VPC's instances on other nodes it
has a link: a bridge without an address (``vr-…``) joined to the VPC's namespaces on those
nodes by a VXLAN segment of its own (net/overlay.py, one VNI per VPC), where each node has its
own router MAC. Each remote instance gets a /32 route over the link and a permanent neighbour
entry naming its node's router MAC, so no ARP crosses the link, and a packet between two
subnets is routed by the sender's node, then by the receiver's. Each node's conntrack sees
both directions of its own instances' flows, so security groups stay stateful.

The VPC's CIDR is unreachable in the namespace: an address of the VPC that no subnet here and
no route above covers is refused there, never sent out of the uplink.

Every route and neighbour entry this module writes carries ``proto 99`` (routes) or is on the
link (neighbours), so the ones no longer wanted are found and removed. Idempotent."""

from __future__ import annotations

import ipaddress
import json

from corral.node.net import overlay
from corral.node.net.uplink import ROUTED_PROTO as PROTO  # Corral's routes, told apart by it
from corral.node.spec import ROUTER_LINK_PREFIX, RouterSpec
from corral.proc import arun


async def _ip(ns: str, *args: str, check: bool = True) -> str:
    return await arun(["ip", "-n", ns, *args], check=check)


async def ensure(spec: RouterSpec) -> None:
    ns = spec.namespace
    ipaddress.ip_network(spec.cidr)
    await _ip(ns, "route", "replace", "unreachable", spec.cidr, "proto", PROTO)
    links = json.loads(await _ip(ns, "-json", "link", "show") or "[]")
    stale = {
        link["ifname"]
        for link in links
        if link["ifname"].startswith(ROUTER_LINK_PREFIX)
        and (spec.link is None or link["ifname"] != spec.link.bridge)
    }
    # the VPC no longer runs elsewhere: its link's VXLAN device, then its bridge
    for link in sorted(links, key=lambda x: x.get("master") not in stale):
        if link["ifname"] in stale or link.get("master") in stale:
            await _ip(ns, "link", "delete", link["ifname"], check=False)
    if spec.link is None:
        return
    link = spec.link
    await overlay.ensure_spec(link)
    here = {x["ifname"]: x for x in json.loads(await _ip(ns, "-json", "link", "show") or "[]")}
    if here.get(link.bridge, {}).get("address") != spec.mac:
        await _ip(ns, "link", "set", link.bridge, "address", spec.mac)
    await _routes(ns, link.bridge, spec.routes)


async def _routes(ns: str, dev: str, routes: dict[str, str]) -> None:
    """Exactly ``routes`` (address -> router MAC) over ``dev``: a /32 route and a permanent
    neighbour entry each; only what differs is written."""
    for addr in routes:
        ipaddress.IPv4Address(addr)
    out = await _ip(ns, "-json", "route", "show", "dev", dev, "proto", PROTO)
    have = {r["dst"] for r in json.loads(out or "[]")}
    neigh = {
        n["dst"]: n.get("lladdr")
        for n in json.loads(await _ip(ns, "-json", "neigh", "show", "dev", dev) or "[]")
    }
    for addr, mac in sorted(routes.items()):
        if neigh.get(addr) != mac:  # the neighbour first: the route never points at nothing
            await _ip(ns, "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent")
        if addr not in have:
            await _ip(ns, "route", "replace", f"{addr}/32", "dev", dev, "proto", PROTO)
    for addr in sorted(have - set(routes)):
        await _ip(ns, "route", "del", f"{addr}/32", "dev", dev, check=False)
    for addr in sorted(set(neigh) - set(routes)):
        await _ip(ns, "neigh", "del", addr, "dev", dev, check=False)
