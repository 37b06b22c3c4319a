"""What the kernel must enforce on a network, computed from the store: every instance's port
(tap, MAC, address), its security groups and rules, elastic IPs, bandwidth caps, the uplink."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.config import Settings
from corral.controller.instances import tap_name
from corral.node.spec import GroupSpec, NetworkSpec, PolicySpec, PortSpec, RuleSpec, UplinkSpec
from corral.store.models import Instance, Network


def uplink_spec(settings: Settings) -> UplinkSpec | None:
    if settings.uplink == "none":
        return None
    net = ipaddress.ip_network(settings.public_cidr)
    hosts = list(net.hosts())
    peer = settings.uplink.split(":", 1)[1] if settings.uplink.startswith("netns:") else None
    return UplinkSpec(peer_netns=peer, cidr=str(net), address=str(hosts[0]),
                      gateway=str(hosts[-1]))


def default_group_id(account_id: str) -> str:
    return f"sg-default{account_id}"


def default_group(account_id: str) -> GroupSpec:
    """EC2's default group: members admit each other; all egress."""
    gid = default_group_id(account_id)
    return GroupSpec(id=gid, ingress=[RuleSpec(protocol="all", groups=[gid])],
                     egress=[RuleSpec(protocol="all", cidrs=["0.0.0.0/0"])])


async def build(s: AsyncSession, network: Network, spec: NetworkSpec,
                settings: Settings) -> PolicySpec:
    rows = list(await s.scalars(select(Instance).where(
        Instance.network_id == network.id, Instance.state != "terminated",
        Instance.private_ip.is_not(None)).order_by(Instance.private_ip)))
    groups: dict[str, GroupSpec] = {}
    ports = []
    for inst in rows:
        g = default_group(inst.account_id)
        groups[g.id] = g
        assert inst.private_ip is not None
        ports.append(PortSpec(instance_id=inst.id, tap=tap_name(inst.id), mac=inst.mac,
                              address=inst.private_ip, groups=[g.id],
                              rate_mbit=inst.net_limit_mbit,
                              metadata_hop_limit=inst.metadata_hop_limit))
    return PolicySpec(network=spec, groups=list(groups.values()), ports=ports,
                      uplink=uplink_spec(settings))
