"""What the kernel must enforce on a network, computed from the store: every instance's port
(tap, MAC, address), its security groups and their rules, elastic IPs, bandwidth caps, the
IMDSv2 hop limit, and the uplink."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.config import Settings
from corral.controller import instance_types
from corral.controller.instances import tap_name
from corral.node.spec import (
    Bucket,
    GroupSpec,
    NetworkSpec,
    PolicySpec,
    PortSpec,
    RemoteMember,
    RoutedPublic,
    RuleSpec,
    UplinkSpec,
    transit_ends,
)
from corral.store.models import (
    ElasticAddress,
    Instance,
    InstanceSecurityGroup,
    Network,
    SecurityGroup,
    SecurityGroupRule,
)


def uplink_spec(settings: Settings) -> UplinkSpec | None:
    if settings.uplink == "none":
        return None
    net = ipaddress.ip_network(settings.public_cidr)
    hosts = list(net.hosts())
    peer = settings.uplink.split(":", 1)[1] if settings.uplink.startswith("netns:") else None
    return UplinkSpec(peer_netns=peer, cidr=str(net), address=str(hosts[0]), gateway=str(hosts[-1]))


def _rule(r: SecurityGroupRule) -> RuleSpec:
    return RuleSpec(
        protocol="all" if r.protocol == "-1" else r.protocol,
        from_port=r.from_port,
        to_port=r.to_port,
        cidrs=[r.cidr] if r.cidr else [],
        groups=[r.source_group_id] if r.source_group_id else [],
    )


async def _membership(s: AsyncSession, rows: list[Instance]) -> dict[str, list[str]]:
    """Each instance's security groups (its account's default group when it has none)."""
    iids = [i.id for i in rows]
    membership: dict[str, list[str]] = {}
    for iid, gid in await s.execute(
        select(InstanceSecurityGroup.instance_id, InstanceSecurityGroup.group_id).where(
            InstanceSecurityGroup.instance_id.in_(iids)
        )
    ):
        membership.setdefault(iid, []).append(gid)
    # instances from before security groups existed belong to their account's default group
    defaults = dict(
        (
            await s.execute(
                select(SecurityGroup.account_id, SecurityGroup.id).where(
                    SecurityGroup.name == "default",
                    SecurityGroup.vpc_id == "",
                    SecurityGroup.account_id.in_({i.account_id for i in rows}),
                )
            )
        ).all()
    )
    for inst in rows:
        if not membership.get(inst.id) and inst.account_id in defaults:
            membership[inst.id] = [defaults[inst.account_id]]
    return membership


async def members(s: AsyncSession, network_ids: list[str]) -> list[RemoteMember]:
    """The instances of these networks (a segment's networks on other nodes) as group
    members, for group-to-group rules that must match them across nodes."""
    if not network_ids:
        return []
    rows = list(
        await s.scalars(
            select(Instance)
            .where(
                Instance.network_id.in_(network_ids),
                Instance.state != "terminated",
                Instance.private_ip.is_not(None),
            )
            .order_by(Instance.private_ip)
        )
    )
    groups = await _membership(s, rows)
    return [
        RemoteMember(
            instance_id=i.id, address=str(i.private_ip), groups=sorted(groups.get(i.id, []))
        )
        for i in rows
    ]


async def routed(s: AsyncSession, node_id: str) -> list[RoutedPublic]:
    """The elastic IPs of live instances in the VPC namespaces on ``node_id``: its own
    namespace routes each into the instance's VPC (``PolicySpec.routed``)."""
    rows = await s.execute(
        select(ElasticAddress.public_ip, Network.transit, Network.namespace)
        .join(Instance, Instance.id == ElasticAddress.instance_id)
        .join(Network, Network.id == Instance.network_id)
        .where(
            Network.node_id == node_id,
            Network.transit.is_not(None),
            Instance.state != "terminated",
        )
        .order_by(ElasticAddress.public_ip)
    )
    return [
        RoutedPublic(public_ip=ip, via=transit_ends(str(transit))[1], namespace=namespace)
        for ip, transit, namespace in rows
    ]


async def addressed(s: AsyncSession, network: Network) -> list[Instance]:
    """The live instances with an address on ``network``, by address."""
    return list(
        await s.scalars(
            select(Instance)
            .where(
                Instance.network_id == network.id,
                Instance.state != "terminated",
                Instance.private_ip.is_not(None),
            )
            .order_by(Instance.private_ip)
        )
    )


async def build(
    s: AsyncSession,
    network: Network,
    spec: NetworkSpec,
    settings: Settings,
    arriving: set[str] | frozenset[str] = frozenset(),
) -> PolicySpec:
    """The node's policy for ``network``: its instances' ports, and those of ``arriving``
    (instances being live-migrated to this node: their groups guard what reaches their tap
    here before they run here; their elastic IP stays where they run)."""
    rows = await addressed(s, network)
    incoming: list[Instance] = []
    if arriving := set(arriving) - {r.id for r in rows}:  # not yet recorded here
        for i in await s.scalars(select(Instance).where(Instance.id.in_(sorted(arriving)))):
            home = await s.get(Network, i.network_id) if i.network_id else None
            if (
                i.private_ip is not None
                and i.state != "terminated"
                and home is not None
                and (home.name, home.cidr) == (network.name, network.cidr)  # its segment
            ):
                incoming.append(i)
        rows = [*rows, *incoming]
    iids = [i.id for i in rows]
    membership = await _membership(s, rows)
    gids = {g for gs in membership.values() for g in gs}
    groups: dict[str, GroupSpec] = {g: GroupSpec(id=g) for g in gids}
    for r in await s.scalars(
        select(SecurityGroupRule)
        .where(SecurityGroupRule.group_id.in_(gids))
        .order_by(SecurityGroupRule.id)
    ):
        (
            groups[r.group_id].ingress if r.direction == "ingress" else groups[r.group_id].egress
        ).append(_rule(r))
    public = dict(
        (
            await s.execute(
                select(ElasticAddress.instance_id, ElasticAddress.public_ip).where(
                    ElasticAddress.instance_id.in_(iids)
                )
            )
        ).all()
    )
    ports = []
    for inst in rows:
        assert inst.private_ip is not None
        caps = port_buckets(inst)
        ports.append(
            PortSpec(
                instance_id=inst.id,
                tap=tap_name(inst.id),
                mac=inst.mac,
                address=inst.private_ip,
                groups=sorted(membership.get(inst.id, [])),
                public_ip=None if inst in incoming else public.get(inst.id),
                rate_mbit=inst.net_limit_mbit,
                metadata_hop_limit=inst.metadata_hop_limit,
                to_guest=caps[0],
                from_guest=caps[1],
            )
        )
    return PolicySpec(
        network=spec,
        groups=sorted(groups.values(), key=lambda g: g.id),
        ports=ports,
        uplink=uplink_spec(settings),
    )


def merge(policy: PolicySpec, other: PolicySpec) -> PolicySpec:
    """``policy`` with ``other`` (another network of the same VPC namespace, issue 12) folded
    in: its ports and groups join, its network becomes a sibling (routed between)."""
    groups = {g.id: g for g in [*policy.groups, *other.groups]}
    have = {p.instance_id for p in policy.ports}
    return policy.model_copy(
        update={
            "groups": sorted(groups.values(), key=lambda g: g.id),
            "ports": [*policy.ports, *(p for p in other.ports if p.instance_id not in have)],
            "siblings": [*policy.siblings, other.network],
        }
    )


def port_buckets(inst: Instance) -> tuple[Bucket | None, Bucket | None]:
    """(to the guest, from the guest) caps of ``inst``'s port: a cap set on the instance
    (``net_limit_mbit``) is a plain cap both ways; else its type's sustained rates with their
    burst bucket; custom sizes and types without caps: none."""
    if inst.net_limit_mbit:
        return None, None  # the node's plain rate_mbit cap, both ways
    t = instance_types.CATALOG.get(inst.instance_type or "")
    if t is None or not t.net_out_mbit:
        return None, None
    burst = t.net_burst_mib << 20
    peak = t.net_peak_mbit or None
    return (
        Bucket(rate_mbit=t.net_in_mbit, burst_bytes=burst, peak_mbit=peak),
        Bucket(rate_mbit=t.net_out_mbit, burst_bytes=burst, peak_mbit=peak),
    )
