"""A subnet's layer-2 segment across nodes (issue 12): the segment's bridge in the node's
data-plane namespace joined to the other nodes by one VXLAN device (one VNI per segment) over
the underlay. Learning is off (``nolearning``): every forwarding entry is Corral's, written
from the MACs it placed (``entries``: a guest MAC and the underlay address of the node that
runs it), and broadcast/unknown traffic (ARP, DHCP) is replicated only to the nodes that host
the segment (``peers``: all-zero entries, head-end replication), never flooded to the LAN.

The VXLAN device is made in the underlay's namespace (its UDP socket stays there) and then
moved into the data-plane namespace, where it joins the bridge; its MTU is the underlay's less
the 50-byte VXLAN overhead, and the guests get the same through DHCP (option 26). Every call is
idempotent and converges: entries no longer wanted are removed."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from corral.errors import Invalid
from corral.node.spec import VXLAN_OVERHEAD, OverlaySpec, vxlan_device
from corral.node.spec import guest_mtu as spec_guest_mtu
from corral.proc import arun

PORT = 4789  # IANA's VXLAN port
OVERHEAD = VXLAN_OVERHEAD  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
ZERO_MAC = "00:00:00:00:00:00"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


device = vxlan_device
guest_mtu = spec_guest_mtu


def gateway_mac(gateway: str) -> str:
    """The MAC of a subnet's gateway: the same on every node (a distributed gateway), so a
    frame to the gateway is delivered by the guest's own node, whichever node answered its
    ARP. Locally administered (02:), with the gateway's IPv4 address in its last four bytes
    (instances' MACs are 52:54:00:…)."""
    packed = ipaddress.IPv4Address(gateway).packed
    return "02:cc:" + ":".join(f"{b:02x}" for b in packed)


@dataclass(frozen=True)
class Segment:
    namespace: str  # the data-plane namespace holding the bridge
    bridge: str
    vni: int
    local: str  # this node's underlay address
    underlay_namespace: str | None = None  # None: the agent's own namespace
    underlay_dev: str | None = None

    def check(self) -> None:
        if not 1 <= self.vni < 1 << 24:
            raise Invalid(f"VNI {self.vni} must be 1-16777215", field="vni")
        ipaddress.IPv4Address(self.local)


def _ns(ns: str | None) -> list[str]:
    return ["-n", ns] if ns else []


async def _ip(ns: str | None, *args: str, check: bool = True) -> str:
    return await arun(["ip", *_ns(ns), *args], check=check)


async def _bridge(ns: str, *args: str, check: bool = True) -> str:
    return await arun(["bridge", "-n", ns, *args], check=check)


async def _names(ns: str | None) -> set[str]:
    out = await _ip(ns, "-json", "link", "show")
    return {link["ifname"] for link in json.loads(out or "[]")}


async def ensure_spec(spec: OverlaySpec) -> None:
    """``ensure`` for a segment as the controller describes it (a subnet's, or a VPC
    router's link: node/net/router.py)."""
    seg = Segment(
        namespace=spec.namespace,
        bridge=spec.bridge,
        vni=spec.vni,
        local=spec.local,
        underlay_namespace=spec.underlay_namespace,
        underlay_dev=spec.underlay_dev,
    )
    await ensure(seg, spec.peers, spec.entries, spec.spread)


async def ensure(
    seg: Segment,
    peers: list[str],
    entries: dict[str, str],
    spread: list[str] | None = None,
) -> None:
    """The bridge, the VXLAN device on it, and exactly these forwarding entries:
    ``entries`` maps a remote guest's MAC to its node's underlay address; ``peers`` are the
    underlay addresses of the other nodes hosting the segment. ``spread``: remote guests'
    MACs sent to every peer (guests being live-migrated: the kernel keeps one destination per
    unicast MAC, so both nodes get their frames by the broadcast entries)."""
    seg.check()
    spread = spread or []
    for mac in [*entries, *spread]:
        if not MAC_RE.match(mac):
            raise Invalid(f"MAC {mac!r} is not a lower-case colon-separated MAC", field="mac")
    for mac in spread:
        if mac in entries:
            raise Invalid(
                f"MAC {mac} is both at one node (entries) and sent to all (spread): name it in "
                "one of the two",
                field="spread",
            )
    for where in [*entries.values(), *peers]:
        ipaddress.IPv4Address(where)
    dev = device(seg.vni)
    links = await _links(seg.namespace)
    if not _ready(links, seg.bridge, dev):  # the common case (a move, a new entry) skips this
        await _setup(seg, dev, set(links))
    await _fdb(seg.namespace, dev, peers, entries, spread)


async def _links(ns: str | None) -> dict[str, dict[str, Any]]:
    out = await _ip(ns, "-d", "-json", "link", "show")
    return {link["ifname"]: link for link in json.loads(out or "[]")}


def _ready(links: dict[str, dict[str, Any]], bridge: str, dev: str) -> bool:
    """The bridge up, and the VXLAN device up on it with learning off: only entries to write."""
    br, vx = links.get(bridge), links.get(dev)
    if br is None or vx is None or "UP" not in br.get("flags", ()):
        return False
    port = vx.get("linkinfo", {}).get("info_slave_data", {})
    return vx.get("master") == bridge and "UP" in vx.get("flags", ()) and not port.get("learning")


async def _setup(seg: Segment, dev: str, here: set[str]) -> None:
    if seg.bridge not in here:
        await _ip(
            seg.namespace,
            "link",
            "add",
            seg.bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        )
    if dev not in here:
        if dev in await _names(seg.underlay_namespace):  # made, not yet moved (a crash)
            await _ip(seg.underlay_namespace, "link", "delete", dev, check=False)
        args = ["link", "add", dev, "type", "vxlan", "id", str(seg.vni), "local", seg.local]
        args += ["dstport", str(PORT), "nolearning"]
        if seg.underlay_dev:
            args += ["dev", seg.underlay_dev]
        await _ip(seg.underlay_namespace, *args)
        await _ip(seg.underlay_namespace, "link", "set", dev, "netns", seg.namespace)
    await _ip(seg.namespace, "link", "set", dev, "master", seg.bridge)
    # no learning on the bridge port either: the bridge's table for remote MACs is Corral's
    await _bridge(seg.namespace, "link", "set", "dev", dev, "learning", "off")
    await _ip(seg.namespace, "link", "set", dev, "up")
    await _ip(seg.namespace, "link", "set", seg.bridge, "up")


async def _batch(ns: str, lines: list[str], check: bool) -> None:
    """``bridge`` commands in one run (a move rewrites entries while the guest is paused:
    one process, not one per entry). Unchecked: every line tried (``-force``), failures
    ignored (deleting what is already gone)."""
    if lines:
        argv = ["bridge", "-n", ns, *([] if check else ["-force"]), "-batch", "-"]
        await arun(argv, input="".join(f"{line}\n" for line in lines).encode(), check=check)


async def _fdb(
    ns: str, dev: str, peers: list[str], entries: dict[str, str], spread: list[str]
) -> None:
    out = await _bridge(ns, "-json", "fdb", "show", "dev", dev)
    table = json.loads(out or "[]")
    have = {(e["mac"], e["dst"]) for e in table if e.get("dst")}
    want = {(ZERO_MAC, p) for p in peers} | set(entries.items())
    # the bridge's own table too: a frame to a remote guest goes to the VXLAN port only,
    # never flooded to the local guests' taps as unknown unicast (learning is off there);
    # a spread MAC has no tunnel entry, so the VXLAN device sends it to every peer
    remote = set(entries) | set(spread)
    mastered = {
        e["mac"]
        for e in table
        if not e.get("dst") and "master" in e and e.get("state") == "static" and "vlan" not in e
    }
    gone = [f"fdb del {mac} dev {dev} dst {dst}" for mac, dst in sorted(have - want)]
    gone += [f"fdb del {mac} dev {dev} master" for mac in sorted(mastered - remote)]
    new = []
    for mac, dst in sorted(want - have):
        verb = "append" if mac == ZERO_MAC else "replace"
        new.append(f"fdb {verb} {mac} dev {dev} dst {dst} self permanent")
    new += [f"fdb replace {mac} dev {dev} master static" for mac in sorted(remote - mastered)]
    # a moved MAC: its new tunnel entry first, then the stale ones go (never none between)
    await _batch(ns, new, check=True)
    await _batch(ns, gone, check=False)


async def fdb(ns: str, vni: int) -> dict[str, list[str]]:
    """The VXLAN device's forwarding entries: MAC -> underlay addresses (for checks)."""
    out = await _bridge(ns, "-json", "fdb", "show", "dev", device(vni))
    table: dict[str, list[str]] = {}
    for e in json.loads(out or "[]"):
        if e.get("dst"):
            table.setdefault(e["mac"], []).append(e["dst"])
    return table


async def remove(namespace: str, vni: int) -> None:
    if device(vni) in await _names(namespace):
        await _ip(namespace, "link", "delete", device(vni), check=False)
