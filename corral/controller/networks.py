"""Networks: one default network per node (in issue order: more come with the networking work).
The controller owns the records; the node's dnsmasq gets the host list from here."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import imds_docs, overlays, policy
from corral.errors import CorralError, NotFound
from corral.naming import account_zone, private_dns_name
from corral.node.spec import HostRecord, InstanceMetadata, NetworkSpec, PolicySpec, guest_mtu
from corral.store.models import Instance, Network

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

BRIDGE = "cbr0"


class Networks:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        # one push at a time per network, its state read inside: two pushes that overlap (an
        # elastic-IP move and a reconcile pass) would otherwise land in either order, and an
        # older state pushed last stays in the kernel until the next pass
        self._pushing: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

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
        )

    async def hosts(self, s: AsyncSession, network: Network) -> list[HostRecord]:
        """Every instance of the network's segment (its subnet on every node): DHCP for the
        ones on this network, names for all (controller/overlays.py)."""
        nets = [n.id for n in await overlays.segment_networks(s, network)]
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
                    ],
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
            pol = await policy.build(s, row, self.spec(row), self.ctrl.settings)
            siblings = [n.id for n in await overlays.segment_networks(s, row) if n.id != row.id]
            pol.remote = await policy.members(s, siblings)
            pol.overlay_devs = await self.ctrl.overlays.devices(s, row)
            docs = None  # the all-in-one's daemon answers metadata from the store itself
            if row.node_id in self.ctrl.imds_nodes:
                docs = await imds_docs.documents(s, row, self.ctrl.settings)
        return row, hosts, pol, docs

    async def ensure_on_node(self, network_id: str) -> None:
        """Namespace, bridge, dnsmasq with the host list, and the kernel policy (idempotent)."""
        async with self._pushing[network_id]:
            if (want := await self._desired(network_id)) is None:
                return
            row, hosts, pol, docs = want
            node = self.ctrl.node(row.node_id)
            await node.network_ensure(self.spec(row), hosts)
            await node.network_policy(pol)
            if docs is not None:
                await node.metadata_put(self.spec(row), docs)

    async def sync(self, network_id: str | None) -> None:
        """Push what changed in the store to the node: DNS/DHCP hosts and the kernel policy;
        and to the other nodes of the network's segment (their names and group members), then
        the segments themselves (controller/overlays.py). A sibling node that fails is logged:
        the next reconcile pass pushes it again."""
        if network_id is None:
            return
        async with self.ctrl.store.read() as s:
            row = await s.get(Network, network_id)
            siblings = [
                n.id
                for n in (await overlays.segment_networks(s, row) if row is not None else [])
                if n.id != network_id
            ]
            key = overlays.segment_key(row) if row is not None and siblings else None
            vni = await overlays.segment_vni(s, key) if key is not None else None
        if key is not None and vni is None:
            # the VNI first: every node's guard must name the tunnel before it carries frames
            async with self.ctrl.store.write() as s:
                await overlays.segment_vni(s, key, allocate=True)
        await self._sync_one(network_id)
        for nid in siblings:
            try:
                await self._sync_one(nid)
            except CorralError as err:
                log.warning("network %s (a sibling of %s): %s", nid, network_id, err.message)
        if siblings:
            await self.ctrl.overlays.sync()

    async def _sync_one(self, network_id: str) -> None:
        async with self._pushing[network_id]:
            if (want := await self._desired(network_id)) is None:
                return
            row, hosts, pol, docs = want
            node = self.ctrl.node(row.node_id)
            await node.network_policy(pol)
            await node.network_hosts(self.spec(row), hosts)
            if docs is not None:  # a joined node's metadata service: every document again
                await node.metadata_put(self.spec(row), docs)

    async def sync_all(self) -> None:
        """Push every network's policy (a security group or an elastic IP changed)."""
        async with self.ctrl.store.read() as s:
            ids_ = list(await s.scalars(select(Network.id)))
        for nid in ids_:
            await self._sync_one(nid)

    async def by_namespace(self, namespace: str) -> list[Network]:
        async with self.ctrl.store.read() as s:
            return list(await s.scalars(select(Network).where(Network.namespace == namespace)))
