"""The router side of a node's namespace: a veth `cx0` to the outside world, the default route
through it, and the elastic IPs it answers for. The outside end lives in the host's namespace
or, in tests, in a namespace standing for the outside world."""

from __future__ import annotations

import hashlib
import ipaddress
import json

from corral.node.net import links
from corral.node.net.firewall import UPLINK_DEV
from corral.node.spec import RoutedPublic, UplinkSpec
from corral.proc import CommandFailed, arun


def peer_name(namespace: str) -> str:
    return "cx-" + hashlib.sha256(namespace.encode()).hexdigest()[:8]


async def ensure(namespace: str, up: UplinkSpec) -> None:
    prefix = ipaddress.ip_network(up.cidr).prefixlen
    peer = peer_name(namespace)
    if UPLINK_DEV not in await links.link_names(namespace):
        where = ["netns", up.peer_netns] if up.peer_netns else []
        await arun(
            [
                "ip",
                "link",
                "add",
                UPLINK_DEV,
                "netns",
                namespace,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                *where,
            ]
        )
    await links.ensure_address(namespace, UPLINK_DEV, f"{up.address}/{prefix}")
    await arun(["ip", "-n", namespace, "link", "set", UPLINK_DEV, "up"])
    await arun(
        ["ip", "-n", namespace, "route", "replace", "default", "via", up.gateway, "dev", UPLINK_DEV]
    )
    outside = ["ip", "-n", up.peer_netns] if up.peer_netns else ["ip"]
    await arun([*outside, "addr", "replace", f"{up.gateway}/{prefix}", "dev", peer])
    await arun([*outside, "link", "set", peer, "up"])


async def set_public_addresses(namespace: str, up: UplinkSpec, wanted: set[str]) -> set[str]:
    """The elastic IPs as /32 addresses on cx0 (so the node answers ARP for them); returns
    the ones removed."""
    out = await arun(["ip", "-n", namespace, "-json", "addr", "show", "dev", UPLINK_DEV])
    have = {
        a["local"]
        for i in json.loads(out or "[]")
        for a in i.get("addr_info", [])
        if a.get("prefixlen") == 32 and a.get("family") == "inet"
    }
    for addr in sorted(wanted - have):
        await arun(["ip", "-n", namespace, "addr", "add", f"{addr}/32", "dev", UPLINK_DEV])
    gone = have - wanted - {up.address}
    for addr in sorted(gone):
        await arun(
            ["ip", "-n", namespace, "addr", "del", f"{addr}/32", "dev", UPLINK_DEV], check=False
        )
    return gone


ROUTED_PROTO = "99"  # the routes of set_routed, told apart from every other route by it


async def set_routed(namespace: str, routed: list[RoutedPublic]) -> None:
    """Elastic IPs of instances in VPC namespaces (issue 12): a proxy-ARP entry on ``cx0`` (the
    node answers for the address without owning it, so the packet is forwarded, not taken)
    and a /32 route over the VPC's transit veth; entries no longer wanted are removed. What is
    there already is left alone (every policy push calls this, for every address)."""
    want = {r.public_ip: r for r in routed}
    out = await arun(["ip", "-n", namespace, "-json", "route", "show", "proto", ROUTED_PROTO])
    routes = {
        str(route.get("dst")): (route.get("gateway"), route.get("dev"))
        for route in json.loads(out or "[]")
    }
    out = await arun(["ip", "-n", namespace, "-json", "neigh", "show", "proxy", "dev", UPLINK_DEV])
    proxied = {str(entry.get("dst")) for entry in json.loads(out or "[]")}
    for r in routed:
        dev = peer_name(r.namespace)
        if routes.get(r.public_ip) != (r.via, dev):
            await arun(
                ["ip", "-n", namespace, "route", "replace", f"{r.public_ip}/32", "via", r.via,
                 "dev", dev, "proto", ROUTED_PROTO]
            )  # fmt: skip
        if r.public_ip not in proxied:
            await arun(
                ["ip", "-n", namespace, "neigh", "replace", "proxy", r.public_ip, "dev", UPLINK_DEV]
            )
    for dst in sorted(routes.keys() - want.keys()):
        await arun(["ip", "-n", namespace, "route", "del", dst, "proto", ROUTED_PROTO], check=False)
    for dst in sorted(proxied - want.keys()):
        await arun(
            ["ip", "-n", namespace, "neigh", "del", "proxy", dst, "dev", UPLINK_DEV], check=False
        )


async def remove(namespace: str, up: UplinkSpec | None) -> None:
    await links.delete_link(namespace, UPLINK_DEV)


NO_FLOWS = "0 flow entries have been deleted"  # conntrack -D exits 1 when nothing matched


async def flush_flows(namespace: str, addresses: set[str]) -> None:
    """Forget conntrack entries to or from ``addresses`` so the next packet of a flow meets
    the new NAT mapping (an elastic IP moved). Nothing to forget is fine; any other failure is
    an error: a kept flow would go on reaching the address's old instance."""
    for addr in sorted(addresses):
        for flag in ("--orig-dst", "--reply-src", "--orig-src"):
            argv = ["ip", "netns", "exec", namespace, "conntrack", "-D", flag, addr]
            try:
                await arun(argv, timeout=10)
            except CommandFailed as err:
                if NO_FLOWS in err.stderr:
                    continue
                raise CommandFailed(
                    argv,
                    err.returncode,
                    f"{err.stderr.strip()}\nthe flows of {addr} could not be forgotten: they "
                    "would keep reaching its old instance (is conntrack installed? run "
                    "scripts/setup)",
                ) from err
