"""Networks: one default network per node, and one network per non-default VPC subnet on each
node that runs its instances, in the VPC's own namespace there (issue 12). The controller owns
the records; the node's dnsmasq gets the host list from here."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import imds_docs, overlays, policy
from corral.errors import CorralError, Invalid, NotFound
from corral.naming import account_zone, private_dns_name
from corral.node.spec import (
    TRANSIT_CIDR,
    HostRecord,
    InstanceMetadata,
    NetworkSpec,
    PolicySpec,
    RoutedPublic,
    UplinkSpec,
    guest_mtu,
    transit_ends,
    transit_slot,
)
from corral.store.models import Instance, Network, Subnet, Vpc

if TYPE_CHECKING:
    from corral.controller.service import Controller
    from corral.node.client import NodeClient

log = logging.getLogger(__name__)

BRIDGE = "cbr0"


def vpc_namespace(node_namespace: str, vpc_id: str) -> str:
    """A VPC's namespace on a node: named after the node's own (unique on the host) and the
    VPC, so two nodes on one host, or two VPCs, never meet."""
    return f"{node_namespace}-{vpc_id}"


def vpc_bridge(subnet_id: str) -> str:
    return "br-" + subnet_id.partition("-")[2][:12]  # at most 15 characters


def transit_uplink(transit: str, node_namespace: str) -> UplinkSpec:
    """A VPC namespace's uplink: a veth into its node's namespace, whose uplink takes the
    VPC's (already masqueraded) flows out."""
    node_end, vpc_end = transit_ends(transit)
    return UplinkSpec(peer_netns=node_namespace, cidr=transit, address=vpc_end, gateway=node_end)


class Held(NamedTuple):
    """A VPC subnet's network kept on a node for an instance moving there."""

    network_id: str
    key: tuple[str, str]  # (network name, node id)


class Networks:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        # one push at a time per network, its state read inside: two pushes that overlap (an
        # elastic-IP move and a reconcile pass) would otherwise land in either order, and an
        # older state pushed last stays in the kernel until the next pass
        self._pushing: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._removed: set[str] = set()  # VPC networks removed from their node since start
        # (network name, node id): a VPC subnet's network an instance is moving to, kept on its
        # node while the move lasts though no instance is recorded there yet (``hold_arrival``)
        self._held: Counter[tuple[str, str]] = Counter()
        # a node's own network -> the routed elastic IPs its last policy push carried: a push
        # of a VPC network on the node pushes the node's network only when they changed
        self._routed: dict[str, list[RoutedPublic]] = {}

    async def ensure_default(self, node_id: str, namespace: str | None = None) -> Network:
        """The node's default network, matching the configured subnet and domain, in the
        node's own namespace (``namespace``, as the node reports it; else the one it has)."""
        st = self.ctrl.settings
        net = ipaddress.ip_network(st.subnet)
        async with self.ctrl.store.write() as s:
            row = await s.scalar(
                select(Network).where(Network.node_id == node_id, Network.name == "default")
            )
            if row is None:
                row = Network(
                    id=ids.new_id("network"),
                    name="default",
                    node_id=node_id,
                    cidr=str(net),
                    gateway=str(next(net.hosts())),
                    domain=st.domain,
                    namespace=namespace or st.namespace,
                    bridge=BRIDGE,
                )
                s.add(row)
            elif (row.cidr, row.domain, row.namespace) != (
                str(net),
                st.domain,
                namespace or row.namespace,
            ):
                live = await s.scalar(
                    select(Instance.id).where(
                        Instance.network_id == row.id, Instance.state != "terminated"
                    )
                )
                if live and row.cidr != str(net):
                    from corral.errors import WrongState

                    raise WrongState(
                        f"the subnet changed from {row.cidr} to {net} but instances still use "
                        f"the old one; terminate them first or keep --subnet {row.cidr}",
                        field="subnet",
                    )
                row.cidr, row.gateway = str(net), str(next(net.hosts()))
                row.domain, row.namespace = st.domain, namespace or row.namespace
        return row

    async def default(self, s: AsyncSession, node_id: str) -> Network:
        row = await s.scalar(
            select(Network).where(Network.node_id == node_id, Network.name == "default")
        )
        if row is None:
            raise NotFound(f"node {node_id} has no default network yet", resource="network")
        return row

    def spec(self, row: Network) -> NetworkSpec:
        return NetworkSpec(
            id=row.id,
            namespace=row.namespace,
            bridge=row.bridge,
            cidr=row.cidr,
            gateway=row.gateway,
            domain=row.domain,
            # a joined node's subnet may span nodes over VXLAN: its guests get the MTU that
            # fits the tunnel from their first lease (controller/overlays.py)
            mtu=guest_mtu() if row.node_id in self.ctrl.remotes else 0,
            vpc=row.transit is not None,
        )

    async def hosts(self, s: AsyncSession, network: Network) -> list[HostRecord]:
        """Every instance of the network's segment (its subnet on every node), and for a
        non-default VPC's subnet of every subnet of its VPC: DHCP for the ones on this
        network, names for all (controller/overlays.py) unless the network is a subnet of a
        VPC whose ``enableDnsHostnames`` is off (AWS's default for a VPC made with
        CreateVpc): then its instances get addresses and no names."""
        nets = [n.id for n in await overlays.vpc_networks(s, network)]
        named = True
        if network.transit is not None:  # a non-default VPC's subnet, named by the subnet's id
            named = bool(
                await s.scalar(
                    select(Vpc.dns_hostnames)
                    .join(Subnet, Subnet.vpc_id == Vpc.id)
                    .where(Subnet.id == network.name)
                )
            )
        rows = await s.scalars(
            select(Instance)
            .where(
                Instance.network_id.in_(nets),
                Instance.state != "terminated",
                Instance.private_ip.is_not(None),
            )
            .order_by(Instance.private_ip)
        )
        out = []
        for inst in rows:
            assert inst.private_ip is not None
            out.append(
                HostRecord(
                    mac=inst.mac,
                    address=inst.private_ip,
                    # names qualified by account (naming.py); the id first, so a reverse
                    # lookup tells another account nothing
                    names=[
                        f"{inst.id}.{network.domain}",
                        private_dns_name(inst.name, inst.account_id, network.domain),
                    ]
                    if named
                    else [],
                    hostname=inst.name,
                    zone=account_zone(inst.account_id, network.domain),
                    dhcp=inst.network_id == network.id,
                )
            )
        return out

    async def _desired(
        self, network_id: str
    ) -> tuple[Network, list[HostRecord], PolicySpec, list[InstanceMetadata] | None] | None:
        async with self.ctrl.store.read() as s:
            row = await s.get(Network, network_id)
            if row is None:
                return None
            hosts = await self.hosts(s, row)
            arriving = self.ctrl.overlays.arriving(row.node_id)
            pol = await policy.build(s, row, self.spec(row), self.ctrl.settings, arriving)
            siblings = await self._namespace_networks(s, row)
            for other in siblings:  # every subnet of a VPC in its namespace here
                more = await policy.build(s, other, self.spec(other), self.ctrl.settings, arriving)
                pol = policy.merge(pol, more)
            here = {p.address for p in pol.ports}
            local = {n.id for n in pol.networks}
            others = [n.id for n in await overlays.vpc_networks(s, row) if n.id not in local]
            pol.remote = [m for m in await policy.members(s, others) if m.address not in here]
            devs = {d for n in [row, *siblings] for d in await self.ctrl.overlays.devices(s, n)}
            pol.overlay_devs = sorted(devs)
            if row.transit is not None:  # a VPC's namespace: out through the node's namespace
                node_net = await self.default(s, row.node_id)
                pol.uplink = transit_uplink(row.transit, node_net.namespace) if pol.uplink else None
            elif pol.uplink is not None:  # the node's: elastic IPs routed into its VPCs
                pol.routed = await policy.routed(s, row.node_id)
            docs = None  # the all-in-one's daemon answers metadata from the store itself
            if row.node_id in self.ctrl.imds_nodes or row.transit is not None:
                docs = await imds_docs.documents(s, row, self.ctrl.settings)
        return row, hosts, pol, docs

    async def _namespace_networks(self, s: AsyncSession, row: Network) -> list[Network]:
        """The other networks of ``row``'s VPC namespace on its node (other subnets of the
        VPC): one rule set covers them all. One without instances adds no port."""
        if row.transit is None:
            return []
        return list(
            await s.scalars(
                select(Network)
                .where(
                    Network.node_id == row.node_id,
                    Network.namespace == row.namespace,
                    Network.id != row.id,
                )
                .order_by(Network.id)
            )
        )

    async def ensure_on_node(self, network_id: str) -> None:
        """Namespace, bridge, dnsmasq with the host list, and the kernel policy (idempotent).
        A VPC subnet's network that no live instance uses is removed from its node instead."""
        async with self._pushing[await self._lock_key(network_id)]:
            if await self._unused_vpc_network(network_id):
                return
            if (want := await self._desired(network_id)) is None:
                return
            row, hosts, pol, docs = want
            node = self.ctrl.node(row.node_id)
            await node.network_ensure(self.spec(row), hosts)
            await self._policy(node, row, pol)
            if docs is not None:
                await node.metadata_put(self.spec(row), docs)

    async def _policy(self, node: NodeClient, row: Network, pol: PolicySpec) -> None:
        await node.network_policy(pol)
        if row.transit is None and pol.uplink is not None:
            self._routed[row.id] = pol.routed

    async def _lock_key(self, network_id: str) -> str:
        """What one push at a time is kept to: the network, or a VPC's whole namespace on its
        node (one rule set there covers all its networks; two pushes of it must not cross)."""
        async with self.ctrl.store.read() as s:
            row = await s.get(Network, network_id)
        return row.namespace if row is not None and row.transit is not None else network_id

    async def sync(self, network_id: str | None) -> None:
        """Push what changed in the store to the node: DNS/DHCP hosts and the kernel policy;
        and to the other nodes of the network's segment (their names and group members), then
        the segments themselves (controller/overlays.py). A sibling node that fails is logged:
        the next reconcile pass pushes it again."""
        if network_id is None:
            return
        async with self.ctrl.store.read() as s:
            row = await s.get(Network, network_id)
            near = await overlays.vpc_networks(s, row) if row is not None else []
            siblings = [n.id for n in near if n.id != network_id]
            keys = []  # the VNIs first: every node's guard must name a tunnel before it carries
            if row is not None and len({n.node_id for n in near}) > 1:
                keys = [k for k in {overlays.segment_key(n) for n in near} if k is not None]
                if row.transit is not None:
                    vpc_id = await s.scalar(select(Subnet.vpc_id).where(Subnet.id == row.name))
                    keys.append(overlays.router_key(str(vpc_id)))
            missing = [k for k in sorted(keys) if await overlays.segment_vni(s, k) is None]
        if missing:
            async with self.ctrl.store.write() as s:
                for key in missing:
                    await overlays.segment_vni(s, key, allocate=True)
        await self.sync_one(network_id)
        for nid in siblings:
            try:
                await self.sync_one(nid)
            except CorralError as err:
                log.warning("network %s (a sibling of %s): %s", nid, network_id, err.message)
        if siblings or (row is not None and row.transit is not None):
            await self.ctrl.overlays.sync()  # the segments, and the VPC's routers

    async def sync_one(self, network_id: str) -> None:
        """Push one network's whole desired state (policy, hosts, metadata documents) to its
        node: idempotent, so a retried push is safe (network_push.py)."""
        async with self.ctrl.store.read() as s:
            row = await s.get(Network, network_id)
        if row is not None and row.transit is not None:  # made or removed with its instances
            await self.ensure_on_node(network_id)
            # its instances' elastic IPs are routed into it by the node's own network: pushed
            # again when the node's list changed (an association, a move, a termination)
            try:
                async with self.ctrl.store.read() as s:
                    node_net = await self.default(s, row.node_id)
                    routed = await policy.routed(s, row.node_id)
            except NotFound:
                return
            if self._routed.get(node_net.id) != routed:
                await self.sync_one(node_net.id)
            return
        async with self._pushing[await self._lock_key(network_id)]:
            if (want := await self._desired(network_id)) is None:
                return
            row, hosts, pol, docs = want
            node = self.ctrl.node(row.node_id)
            await self._policy(node, row, pol)
            await node.network_hosts(self.spec(row), hosts)
            if docs is not None:  # a joined node's metadata service: every document again
                await node.metadata_put(self.spec(row), docs)

    async def by_namespace(self, namespace: str) -> list[Network]:
        async with self.ctrl.store.read() as s:
            return list(await s.scalars(select(Network).where(Network.namespace == namespace)))

    # -- non-default VPC subnets: a namespace per VPC per node (issue 12) --------------------

    async def for_subnet(self, s: AsyncSession, subnet: Subnet, node_id: str) -> Network:
        """The network an instance of ``subnet`` on ``node_id`` joins: the node's default
        network for the default subnet it stands for; else the subnet's own network on the
        node (made on first use, in the VPC's namespace there, its gateway the subnet's first
        address; on several nodes, one segment over VXLAN with one IPAM: controller/overlays.py).
        A VPC's subnets on one node share its namespace there, which routes between them
        (and, over the VPC's router link, to its subnets on other nodes)."""
        default = await self.default(s, node_id)
        vpc = await s.get(Vpc, subnet.vpc_id)
        if vpc is not None and vpc.is_default and subnet.is_default and subnet.cidr == default.cidr:
            return default
        if self.ctrl.settings.uplink != "none" and ipaddress.IPv4Network(subnet.cidr).overlaps(
            ipaddress.IPv4Network(TRANSIT_CIDR)
        ):
            raise Invalid(
                f"subnet {subnet.id} ({subnet.cidr}) overlaps the link-local range "
                f"{TRANSIT_CIDR}, which a VPC's namespace uses to reach its node's uplink; "
                "use a subnet of a VPC in 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
                field="subnet",
                ec2_code="InvalidSubnet.Range",
            )
        namespace = vpc_namespace(default.namespace, subnet.vpc_id)
        on_node = list(await s.scalars(select(Network).where(Network.node_id == node_id)))
        # the VPC's subnets on a node share its namespace, and so its uplink's transit /30:
        # the one its networks in use there have (else any of its networks' there, else a
        # free one)
        mine = [n for n in on_node if n.namespace == namespace and n.transit]
        in_use = [n for n in mine if await self._in_use(s, n)]
        shared = next((n.transit for n in [*in_use, *mine]), None)
        row = next((n for n in on_node if n.name == subnet.id), None)
        if row is not None:
            if in_use and row.transit != shared and row not in in_use:
                row.transit = shared  # made under an older Corral, with a /30 of its own
            return row
        used = {n.transit for n in on_node if n.transit}
        slot = shared or next(
            transit_slot(i) for i in range(1 << 14) if transit_slot(i) not in used
        )
        net = ipaddress.IPv4Network(subnet.cidr)
        row = Network(
            id=ids.new_id("network"),
            name=subnet.id,
            node_id=node_id,
            cidr=str(net),
            gateway=str(net.network_address + 1),
            domain=self.ctrl.settings.domain,
            namespace=namespace,
            bridge=vpc_bridge(subnet.id),
            transit=slot,
        )
        s.add(row)
        await s.flush()
        return row

    async def _in_use(self, s: AsyncSession, row: Network) -> bool:
        """Whether a live instance is on the network, or one is moving there."""
        if (row.name, row.node_id) in self._held:
            return True
        live = await s.scalar(
            select(Instance.id)
            .where(Instance.network_id == row.id, Instance.state != "terminated")
            .limit(1)
        )
        return live is not None

    async def hold_arrival(self, instance_id: str, node_id: str) -> Held | None:
        """Before an instance moves to ``node_id`` (live or cold) or its replica is set up
        there: its subnet's network there (a VPC subnet's own, made on first use as for a
        launch, ``for_subnet``, and pushed to the node with its segment), kept on the node
        though no instance is recorded on it yet, until ``release_arrival``. None for a
        default subnet (every node has its network)."""
        async with self.ctrl.store.write() as s:
            inst = await s.get(Instance, instance_id)
            net = await s.get(Network, inst.network_id) if inst and inst.network_id else None
            subnet = await s.get(Subnet, inst.subnet_id) if inst and inst.subnet_id else None
            if net is None or net.transit is None or subnet is None:
                return None
            held = Held((await self.for_subnet(s, subnet, node_id)).id, (net.name, node_id))
        self._held[held.key] += 1
        try:
            await self.sync(held.network_id)
        except BaseException:
            await self.release_arrival(held)
            raise
        return held

    async def release_arrival(self, held: Held | None) -> None:
        """The move is over: the network is pushed again, so it leaves the node if the
        instance did not stay there. Never raises (a node away gets it at its reconnect)."""
        if held is None:
            return
        self._held[held.key] -= 1
        if self._held[held.key] <= 0:
            del self._held[held.key]
        try:
            await self.sync(held.network_id)
        except CorralError as err:
            log.warning("network %s after a move: %s", held.network_id, err.message)

    async def _unused_vpc_network(self, network_id: str) -> bool:
        """Whether ``network_id`` is a VPC subnet's network without live instances (nor one
        moving there); if so it is removed from its node (dnsmasq, metadata, bridge; the
        namespace when no other network of the VPC there is in use). Idempotent."""
        async with self.ctrl.store.read() as s:
            row = await s.get(Network, network_id)
            if row is None or row.transit is None:
                return False
            live = await s.scalar(
                select(Instance.id)
                .join(Network, Instance.network_id == Network.id)
                .where(
                    Network.node_id == row.node_id,
                    Network.namespace == row.namespace,
                    Instance.state != "terminated",
                )
                .limit(1)
            )
            mine = await self._in_use(s, row)
            if not mine:  # an HA instance of the subnet whose secondary this node is
                secondary = await s.scalar(
                    select(Instance.id)
                    .join(Network, Instance.network_id == Network.id)
                    .where(
                        Instance.secondary_node_id == row.node_id,
                        Instance.ha.is_(True),
                        Network.name == row.name,
                        Instance.state != "terminated",
                    )
                    .limit(1)
                )
                mine = secondary is not None
        if mine:
            self._removed.discard(network_id)
            return False
        if network_id in self._removed:
            return True
        spec = self.spec(row)
        if live is not None:  # another subnet of the VPC uses the namespace: keep it
            spec = spec.model_copy(update={"vpc": False})
        await self.ctrl.node(row.node_id).network_remove(spec)
        self._removed.add(network_id)
        if live is None:  # the namespace went, with its segments' devices and its router
            gone = [n.id for n in await self.by_namespace(row.namespace)]
            self.ctrl.overlays.forget_namespace(row.node_id, row.namespace, gone)
        log.info("network %s (%s) removed from node %s", row.id, row.name, row.node_id)
        return True
