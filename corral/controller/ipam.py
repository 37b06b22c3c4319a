"""Private addresses: one per instance per network, never two alike, freed on termination.

The uniqueness is the database's (primary key on network and address), so two concurrent
allocations cannot hand out the same address even across controllers."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.controller.overlays import segment_networks
from corral.errors import Exists, Invalid, NoResources
from corral.store.models import Address, Network

RESERVED_LOW = 9  # .1 is the gateway; .2-.9 are kept for services


def host_range(cidr: str) -> list[ipaddress.IPv4Address]:
    net = ipaddress.IPv4Network(cidr)
    hosts = list(net.hosts())
    return hosts[RESERVED_LOW:] if len(hosts) > RESERVED_LOW + 4 else hosts[1:]


async def allocate(
    s: AsyncSession, network: Network, instance_id: str, wanted: str | None = None
) -> str:
    # unique across the network's segment (its subnet on every node, controller/overlays.py):
    # the store's writer lock serialises allocations, so no two nodes get the same address
    nets = [n.id for n in await segment_networks(s, network)]
    used = set(await s.scalars(select(Address.address).where(Address.network_id.in_(nets))))
    if wanted is not None:
        try:
            addr = ipaddress.ip_address(wanted)
        except ValueError as err:
            raise Invalid(f"address {wanted!r} is not an IPv4 address", field="address") from err
        if addr not in ipaddress.ip_network(network.cidr) or addr not in host_range(network.cidr):
            raise Invalid(
                f"address {wanted} is not a usable address of {network.cidr} "
                f"(the first {RESERVED_LOW + 1} are reserved)",
                field="address",
            )
        if str(addr) in used:
            raise Exists(
                f"address {wanted} is already in use on network {network.name}",
                field="address",
                resource="address",
                ec2_code="InvalidIPAddress.InUse",
            )
        choice = str(addr)
    else:
        free = (str(a) for a in host_range(network.cidr) if str(a) not in used)
        choice = next(free, "")
        if not choice:
            raise NoResources(
                f"no free address left in {network.cidr} on network {network.name}; terminate "
                "an instance or configure a larger subnet (corral up --subnet)",
                field="address",
                resource="address",
            )
    s.add(Address(network_id=network.id, address=choice, instance_id=instance_id))
    return choice


async def release(s: AsyncSession, instance_id: str) -> None:
    row = await s.scalar(select(Address).where(Address.instance_id == instance_id))
    if row is not None:
        await s.delete(row)
