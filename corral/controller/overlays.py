"""Subnets that span nodes (issue 12): the controller drives the agents' VXLAN segments
(``node/net/overlay.py``) from the store.

A segment is the layer-2 network of one subnet across every node that runs one of its
instances. Today that is the zone's default subnet: every account's default VPC shares it on a
node (the node's network: one namespace, bridge ``cbr0`` and dnsmasq; accounts kept apart by
security groups and anti-spoofing), and every node's default network has the same CIDR, so
those networks together are one segment, keyed ``default:<cidr>``, with one VNI allocated in
the store (``overlay_segments``, unique by constraint).

For every segment whose instances run on two nodes or more, each of those nodes gets the
segment (``overlay_ensure``): its VXLAN device on the network's bridge, the other hosting
nodes as broadcast peers, and one forwarding entry per instance running elsewhere (its MAC →
its node's underlay address). While a live migration copies an instance's memory, the other
nodes send its frames to every peer of the segment as they do broadcast (``arrive``; the
kernel keeps one tunnel destination per unicast MAC): both copies get them, and the
destination's, paused until the switch-over, finds in its tap's queue whatever arrived while
the guest moved (none lost; a few answered twice). Its security groups guard it there from
then on (``Networks`` adds it to the destination's policy first). A node that no longer hosts
the segment loses it (``overlay_remove``). Pushes happen when an instance starts, stops,
terminates or moves (the network syncs call ``sync``), every reconcile pass (cheap: only what
changed since the last push is sent), and again after an agent restarted (``forget``).

The rest of the subnet's data plane is per node and needs no tunnel: every node's bridge has
the same gateway address *and MAC* (``overlay.gateway_mac``), so the gateway a guest reaches is
its own node's (a distributed gateway: DHCP, DNS, metadata, SNAT and elastic IPs stay local);
each node's dnsmasq gives DHCP to its own instances only, from one IPAM whose addresses are
unique across the segment (``ipam.allocate``), and resolves every instance's name; each
node's security-group policy counts the segment's remote instances as group members, and its
anti-spoofing guard lets the VXLAN port in (those frames were checked at their own node's tap)
but not another node's gateway frames or DHCP.

A node's underlay address is the host of its agent's ``https://`` address; a node without one
(the controller's own ``local`` node) is left out of segments (logged)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import CorralError
from corral.node.spec import (
    ROUTER_LINK_PREFIX,
    OverlaySpec,
    RouterSpec,
    router_mac,
    vxlan_device,
)
from corral.store.models import Instance, Network, Node, OverlaySegment, Subnet, Vpc

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

FIRST_VNI = 100
ROUTER = "router:"  # the keys of VPC routers in ``Overlays._pushed`` and ``overlay_segments``
# instances whose MAC may be on the wire: being launched, running, being stopped or rebooted
OFF = ("stopped", "terminated")


def segment_key(network: Network) -> str | None:
    """The segment a network belongs to (None: it spans no nodes)."""
    if network.transit is not None:  # a non-default VPC's subnet: its own VNI (issue 12)
        return f"subnet:{network.name}"
    return f"default:{network.cidr}" if network.name == "default" else None


async def segment_networks(s: AsyncSession, network: Network) -> list[Network]:
    """Every node's network in ``network``'s segment (itself included)."""
    if segment_key(network) is None:
        return [network]
    return list(
        await s.scalars(
            select(Network)
            .where(Network.name == network.name, Network.cidr == network.cidr)
            .order_by(Network.id)
        )
    )


async def vpc_networks(s: AsyncSession, network: Network) -> list[Network]:
    """Every network ``network``'s instances exchange routed traffic and names with: for a
    non-default VPC's subnet, every network of every subnet of its VPC, on every node (the
    VPC's router joins them, ``Overlays``); else the segment's (``segment_networks``)."""
    if network.transit is None:
        return await segment_networks(s, network)
    vpc_id = await s.scalar(select(Subnet.vpc_id).where(Subnet.id == network.name))
    return list(
        await s.scalars(
            select(Network)
            .join(Subnet, Subnet.id == Network.name)
            .where(Subnet.vpc_id == vpc_id, Network.transit.is_not(None))
            .order_by(Network.id)
        )
    )


def router_key(vpc_id: str) -> str:
    """The overlay segment key of a VPC's router link (its VNI is allocated as a segment's)."""
    return ROUTER + vpc_id


def router_bridge(vpc_id: str) -> str:
    return ROUTER_LINK_PREFIX + vpc_id.partition("-")[2][:12]  # at most 15 characters


def underlay_address(node: Node) -> str | None:
    """The node's address on the underlay (its agent's TLS address), None when it has none."""
    url = urlsplit(node.address)
    if url.scheme != "https" or not url.hostname:
        return None
    try:
        return str(ipaddress.IPv4Address(url.hostname))
    except ValueError:
        return None


async def segment_vni(s: AsyncSession, key: str, allocate: bool = False) -> int | None:
    """The segment's VNI; allocated (the next free one) when asked and there is none yet.
    Writes are serialised by the store's writer lock; the unique constraint backs it."""
    row = await s.get(OverlaySegment, key)
    if row is not None:
        return row.vni
    if not allocate:
        return None
    top = await s.scalar(select(func.max(OverlaySegment.vni)))
    vni = max(FIRST_VNI, (top or 0) + 1)
    s.add(OverlaySegment(key=key, vni=vni))
    await s.flush()
    return vni


@dataclass(frozen=True)
class Placed:
    instance_id: str
    mac: str
    node_id: str
    network_id: str


class Overlays:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        # what each (node, network) last got: the spec's JSON, or "" for removed
        self._pushed: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()
        # instances being moved, and where to: their forwarding entries follow ahead of the
        # store (a migration's switch-over, a failover), until the store says the same
        self._moving: dict[str, str] = {}
        # instances whose memory is being copied to another node: their frames go to both
        # nodes (the destination's tap holds what arrives while the guest is paused)
        self._both: dict[str, str] = {}
        self._warned: set[str] = set()  # instances logged as out of reach of their segment

    def forget(self, node_id: str) -> None:
        """The node's agent restarted or reconnected: push its segments again."""
        for key in [k for k in self._pushed if k[0] == node_id]:
            del self._pushed[key]

    def forget_namespace(self, node_id: str, namespace: str, network_ids: list[str]) -> None:
        """A VPC's namespace left the node (its segments and router with it): push them
        again if it comes back."""
        for key in [(node_id, n) for n in network_ids] + [(node_id, ROUTER + namespace)]:
            self._pushed.pop(key, None)

    def arrive(self, instance_id: str, node_id: str) -> None:
        """From the next ``sync``, send the instance's frames to ``node_id`` as well as to its
        own node, from every other node of its segment: a live migration's memory copy is
        starting. The destination's copy of the guest is not running yet, so its tap holds
        those frames; when the guest resumes there it finds every packet that arrived during
        the pause (a few it already answered at the source come twice: duplicates, never
        losses). The destination's policy must guard the instance first (its network's
        ``arriving``). Ended by ``move`` (the switch-over) or ``done_moving`` (rolled back)."""
        self._both[instance_id] = node_id

    def arriving(self, node_id: str) -> set[str]:
        """The instances migrating to ``node_id`` whose frames reach it already (the memory
        copy or the switch-over under way, the store not yet saying so)."""
        moving = [*self._both.items(), *self._moving.items()]
        return {iid for iid, to in moving if to == node_id}

    async def move(self, instance_id: str, node_id: str) -> None:
        """Point the instance's forwarding entries at ``node_id`` on every node of its segment
        now, before (or without waiting for) the store recording the move: for a live
        migration's switch-over or an HA failover, so the instance keeps its address, MAC and
        reachability on the new node. The segment reaches ``node_id`` too. Once the store
        has the instance on ``node_id`` (or ``done_moving`` is called) the store rules again."""
        self._both.pop(instance_id, None)
        self._moving[instance_id] = node_id
        await self.sync()

    async def done_moving(self, instance_id: str) -> None:
        """A move ended (completed or rolled back): the store says where the instance runs."""
        self._moving.pop(instance_id, None)
        self._both.pop(instance_id, None)
        await self.sync()

    async def _plan(self) -> dict[tuple[str, str], tuple[Network, OverlaySpec | None]]:
        """What every (node, network) of a segment must have: a spec, or None (no segment)."""
        async with self.ctrl.store.read() as s:
            nets = list(await s.scalars(select(Network).order_by(Network.id)))
            nodes = {n.id: n for n in await s.scalars(select(Node))}
            rows = await s.execute(
                select(Instance.id, Instance.mac, Instance.node_id, Instance.network_id).where(
                    Instance.state.not_in(OFF),
                    Instance.node_id.is_not(None),
                    Instance.network_id.is_not(None),
                )
            )
            placed = [Placed(i, m, str(n), str(w)) for i, m, n, w in rows]
            have = {
                r.key: r.vni
                for r in await s.scalars(select(OverlaySegment))  # the allocated VNIs
            }
        net_by_id = {n.id: n for n in nets}
        segments: defaultdict[str, list[Network]] = defaultdict(list)
        for n in nets:
            if (key := segment_key(n)) is not None:
                segments[key].append(n)
        addr = {nid: underlay_address(n) for nid, n in nodes.items()}
        if self._moving:
            settled = {
                p.instance_id for p in placed if self._moving.get(p.instance_id) == p.node_id
            }
            for iid in settled:
                self._moving.pop(iid, None)
        plan: dict[tuple[str, str], tuple[Network, OverlaySpec | None]] = {}
        for key, members in segments.items():
            by_node = {n.node_id: n for n in members}
            here: list[Placed] = []
            for p in placed:
                if p.network_id not in net_by_id or net_by_id[p.network_id] not in members:
                    continue
                to = self._moving.get(p.instance_id)
                if to is not None and to in by_node:
                    p = Placed(p.instance_id, p.mac, to, by_node[to].id)
                here.append(p)
            # a migrating instance's destination hosts the segment already (its tap is there)
            bound = {
                p.instance_id: to
                for p in here
                if (to := self._both.get(p.instance_id)) in by_node and to != p.node_id
            }
            hosting = sorted(
                {p.node_id for p in here if addr.get(p.node_id)}
                | {to for to in bound.values() if addr.get(to)}
            )
            for p in here:
                if (
                    len(members) > 1
                    and not addr.get(p.node_id)
                    and p.instance_id not in self._warned
                ):
                    self._warned.add(p.instance_id)
                    log.warning(
                        "instance %s on node %s: the node has no underlay address, so the "
                        "subnet's segment does not reach it",
                        p.instance_id,
                        p.node_id,
                    )
            vni = have.get(key)
            if len(hosting) >= 2 and vni is None:
                async with self.ctrl.store.write() as s:
                    vni = await segment_vni(s, key, allocate=True)
            for net in members:
                if net.node_id in hosting and len(hosting) >= 2 and vni is not None:
                    local = addr[net.node_id]
                    assert local is not None
                    spec = OverlaySpec(
                        namespace=net.namespace,
                        bridge=net.bridge,
                        vni=vni,
                        local=local,
                        peers=[str(addr[n]) for n in hosting if n != net.node_id],
                        entries={
                            p.mac: str(addr[p.node_id])
                            for p in here
                            if p.node_id != net.node_id
                            and addr.get(p.node_id)
                            and p.instance_id not in bound  # moving: spread, or arriving here
                        },
                        spread=sorted(
                            p.mac
                            for p in here
                            if (to := bound.get(p.instance_id)) is not None
                            and net.node_id not in (p.node_id, to)
                        ),
                    )
                    plan[(net.node_id, net.id)] = (net, spec)
                elif vni is not None and addr.get(net.node_id):
                    plan[(net.node_id, net.id)] = (net, None)
        return plan

    async def sync(self) -> None:
        """Bring every node's segments in line with the store (only what changed is sent).
        The nodes are sent to at once (a move's entries must reach every node while its guest
        is paused); a node that fails is logged and tried again at the next pass, the others
        go on."""
        async with self._lock:
            plan = await self._plan()
            per_node: dict[str, list[tuple[str, Network, OverlaySpec | None]]] = {}
            for (node_id, net_id), (net, spec) in sorted(plan.items()):
                if node_id not in self.ctrl.nodes or not self.ctrl.cluster.reachable(node_id):
                    continue
                want = spec.model_dump_json() if spec is not None else ""
                if self._pushed.get((node_id, net_id)) != want:
                    per_node.setdefault(node_id, []).append((net_id, net, spec))
            await asyncio.gather(*(self._push(n, todo) for n, todo in per_node.items()))
            routers = await self._router_plan()
            wanted = {(node_id, ROUTER + ns) for node_id, ns in routers}
            for key in [k for k in self._pushed if k[1].startswith(ROUTER) and k not in wanted]:
                del self._pushed[key]  # gone from there: pushed again if it comes back
            todo = [
                (node_id, spec)
                for (node_id, ns), spec in sorted(routers.items())
                if node_id in self.ctrl.nodes
                and self.ctrl.cluster.reachable(node_id)
                and self._pushed.get((node_id, ROUTER + ns)) != spec.model_dump_json()
            ]
            await asyncio.gather(*(self._push_router(n, spec) for n, spec in todo))

    async def _push_router(self, node_id: str, spec: RouterSpec) -> None:
        try:
            await self.ctrl.node(node_id).router_ensure(spec)
        except CorralError as err:
            log.warning("node %s: the router of %s: %s", node_id, spec.namespace, err.message)
            return
        self._pushed[(node_id, ROUTER + spec.namespace)] = spec.model_dump_json()

    async def _router_plan(self) -> dict[tuple[str, str], RouterSpec]:
        """What each VPC namespace holding live instances must have: its router, with a link
        to the VPC's other nodes (one VNI per VPC) and a route per instance running on one of
        them. An instance being moved counts where it moves (``move``)."""
        async with self.ctrl.store.read() as s:
            rows = (
                await s.execute(
                    select(Network.node_id, Network.namespace, Subnet.vpc_id, Vpc.cidr)
                    .join(Subnet, Subnet.id == Network.name)
                    .join(Vpc, Vpc.id == Subnet.vpc_id)
                    .where(Network.transit.is_not(None))
                )
            ).all()
            placed = (
                await s.execute(
                    select(Instance.id, Instance.private_ip, Instance.node_id, Subnet.vpc_id)
                    .join(Network, Network.id == Instance.network_id)
                    .join(Subnet, Subnet.id == Network.name)
                    .where(
                        Instance.state.not_in(OFF),
                        Instance.node_id.is_not(None),
                        Instance.private_ip.is_not(None),
                        Network.transit.is_not(None),
                    )
                )
            ).all()
            addr = {n.id: underlay_address(n) for n in await s.scalars(select(Node))}
            have = {
                r.key: r.vni
                for r in await s.scalars(
                    select(OverlaySegment).where(OverlaySegment.key.startswith(ROUTER))
                )
            }
        namespaces = {(node, vpc): ns for node, ns, vpc, _ in rows}
        cidrs = {vpc: cidr for _, _, vpc, cidr in rows}
        members: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)  # vpc -> (ip, node)
        for iid, ip, node, vpc in placed:
            members[vpc].append((str(ip), self._moving.get(iid, str(node))))
        plan: dict[tuple[str, str], RouterSpec] = {}
        for vpc, here in sorted(members.items()):
            hosting = sorted({n for _, n in here if (n, vpc) in namespaces})
            linked = [n for n in hosting if addr.get(n)]
            vni = have.get(router_key(vpc))
            if len(linked) >= 2 and vni is None:
                async with self.ctrl.store.write() as s:
                    vni = await segment_vni(s, router_key(vpc), allocate=True)
            for node in hosting:
                ns = namespaces[(node, vpc)]
                link, routes = None, {}
                if node in linked and len(linked) >= 2 and vni is not None:
                    local = addr[node]
                    assert local is not None
                    others = [n for n in linked if n != node]
                    link = OverlaySpec(
                        namespace=ns,
                        bridge=router_bridge(vpc),
                        vni=vni,
                        local=local,
                        peers=[str(addr[n]) for n in others],
                        entries={router_mac(vpc, n): str(addr[n]) for n in others},
                    )
                    routes = {ip: router_mac(vpc, n) for ip, n in here if n in others}
                plan[(node, ns)] = RouterSpec(
                    namespace=ns, cidr=cidrs[vpc], mac=router_mac(vpc, node), link=link,
                    routes=routes,
                )  # fmt: skip
        return plan

    async def _push(
        self, node_id: str, todo: list[tuple[str, Network, OverlaySpec | None]]
    ) -> None:
        node = self.ctrl.node(node_id)
        for net_id, net, spec in todo:
            try:
                if spec is not None:
                    await node.overlay_ensure(spec)
                else:
                    async with self.ctrl.store.read() as s:
                        vni = await segment_vni(s, segment_key(net) or "")
                    if vni is not None:
                        await node.overlay_remove(net.namespace, vni)
            except CorralError as err:
                log.warning("node %s: its subnet segment: %s", node_id, err.message)
                continue
            self._pushed[(node_id, net_id)] = spec.model_dump_json() if spec is not None else ""

    async def devices(self, s: AsyncSession, network: Network) -> list[str]:
        """The VXLAN device names the network's namespace may have (for its guard): the
        segment's, and for a VPC's subnet its router's link."""
        keys = [segment_key(network)]
        if network.transit is not None:
            keys.append(router_key(str(await s.scalar(
                select(Subnet.vpc_id).where(Subnet.id == network.name)
            ))))  # fmt: skip
        out = []
        for key in keys:
            vni = await segment_vni(s, key) if key is not None else None
            if vni is not None:
                out.append(vxlan_device(vni))
        return out
