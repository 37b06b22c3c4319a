"""IPAM: private addresses from a network's range, never two alike, freed on release."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select

from corral.controller import ipam
from corral.errors import Code, Exists, Invalid, NoResources
from corral.store import Store
from corral.store.models import Account, Address, Image, Instance, Network, Node

pytestmark = pytest.mark.postgres  # also on PostgreSQL

NewInstance = Callable[[], Awaitable[str]]


async def _network(store: Store, cidr: str) -> Network:
    async with store.write() as s:
        s.add(Account(id="000000000001", name="admin", admin=True))
        s.add(Image(id="ami-00000000000000001", name="tiny", digest="0" * 64))
        s.add(Node(id="node-n1", name="n1"))
        await s.flush()
        net = Network(
            id="net-00000000000000001",
            name="default",
            node_id="node-n1",
            cidr=cidr,
            gateway=str(next(ipaddress.ip_network(cidr).hosts())),
            domain="corral.internal",
            namespace="corral-test",
            bridge="cbr0",
        )
        s.add(net)
    return net


def _instance_factory(store: Store) -> NewInstance:
    count = 0

    async def new_instance() -> str:
        nonlocal count
        count += 1
        iid = f"i-{count:017x}"
        async with store.write() as s:
            s.add(
                Instance(
                    id=iid,
                    account_id="000000000001",
                    name=f"vm{count}",
                    image_id="ami-00000000000000001",
                    node_id="node-n1",
                    network_id="net-00000000000000001",
                    memory=64 << 20,
                    disk_size=64 << 20,
                    mac=f"52:54:00:00:00:{count:02x}",
                )
            )
        return iid

    return new_instance


@pytest.fixture
async def net24(store: Store) -> Network:
    return await _network(store, "10.88.0.0/24")


@pytest.fixture
async def net29(store: Store) -> Network:
    return await _network(store, "10.99.0.0/29")


@pytest.fixture
def new_instance(store: Store) -> NewInstance:
    return _instance_factory(store)


async def _allocate(store: Store, net: Network, iid: str, wanted: str | None = None) -> str:
    async with store.write() as s:
        return await ipam.allocate(s, net, iid, wanted)


def test_host_range_keeps_the_gateway_and_service_addresses_out() -> None:
    hosts = ipam.host_range("10.88.0.0/24")
    assert str(hosts[0]) == "10.88.0.10"
    assert str(hosts[-1]) == "10.88.0.254"
    assert len(hosts) == 245


def test_host_range_of_a_small_subnet_keeps_only_the_gateway_out() -> None:
    assert [str(a) for a in ipam.host_range("10.99.0.0/29")] == [
        "10.99.0.2",
        "10.99.0.3",
        "10.99.0.4",
        "10.99.0.5",
        "10.99.0.6",
    ]


async def test_allocate_hands_out_the_first_free_address_after_the_reserved_ones(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    first = await _allocate(store, net24, await new_instance())
    second = await _allocate(store, net24, await new_instance())
    assert (first, second) == ("10.88.0.10", "10.88.0.11")


async def test_allocate_skips_addresses_in_use(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    await _allocate(store, net24, await new_instance(), "10.88.0.10")
    await _allocate(store, net24, await new_instance(), "10.88.0.11")
    assert await _allocate(store, net24, await new_instance()) == "10.88.0.12"


async def test_allocate_records_the_lease(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    iid = await new_instance()
    addr = await _allocate(store, net24, iid)
    async with store.read() as s:
        rows = list(await s.scalars(select(Address)))
    assert [(r.network_id, r.address, r.instance_id) for r in rows] == [(net24.id, addr, iid)]


async def test_allocate_gives_a_wanted_free_address(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    assert await _allocate(store, net24, await new_instance(), "10.88.0.77") == "10.88.0.77"


@pytest.mark.parametrize(
    "wanted",
    [
        "10.89.0.5",  # another subnet
        "10.88.0.0",  # the network address
        "10.88.0.1",  # the gateway
        "10.88.0.9",  # kept for services
        "10.88.0.255",  # broadcast
        "fd00::5",  # IPv6
    ],
)
async def test_allocate_refuses_a_wanted_address_outside_the_usable_range(
    store: Store, net24: Network, new_instance: NewInstance, wanted: str
) -> None:
    with pytest.raises(Invalid) as info:
        await _allocate(store, net24, await new_instance(), wanted)
    assert info.value.code == Code.INVALID
    assert info.value.field == "address"
    assert "10.88.0.0/24" in info.value.message


@pytest.mark.parametrize("wanted", ["banana", "10.88.0", "10.88.0.300", ""])
async def test_allocate_refuses_a_wanted_value_that_is_no_address(
    store: Store, net24: Network, new_instance: NewInstance, wanted: str
) -> None:
    with pytest.raises(Invalid) as info:
        await _allocate(store, net24, await new_instance(), wanted)
    assert (info.value.code, info.value.field) == (Code.INVALID, "address")


async def test_allocate_refuses_a_wanted_address_in_use_with_exists(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    await _allocate(store, net24, await new_instance(), "10.88.0.50")
    with pytest.raises(Exists) as info:
        await _allocate(store, net24, await new_instance(), "10.88.0.50")
    assert info.value.code == Code.EXISTS
    assert (info.value.field, info.value.resource) == ("address", "address")
    assert info.value.http_status == 409


async def test_exhausted_subnet_raises_no_resources_naming_the_fix(
    store: Store, net29: Network, new_instance: NewInstance
) -> None:
    got = [await _allocate(store, net29, await new_instance()) for _ in range(5)]
    assert got == ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5", "10.99.0.6"]
    with pytest.raises(NoResources) as info:
        await _allocate(store, net29, await new_instance())
    err = info.value
    assert err.code == Code.NO_RESOURCES
    assert err.to_dict()["code"] == "no_resources"
    assert "10.99.0.0/29" in err.message
    assert "terminate an instance" in err.message and "--subnet" in err.message


async def test_release_frees_the_address_for_the_next_allocation(
    store: Store, net29: Network, new_instance: NewInstance
) -> None:
    iids = [await new_instance() for _ in range(5)]
    for iid in iids:
        await _allocate(store, net29, iid)
    async with store.write() as s:
        await ipam.release(s, iids[2])
    assert await _allocate(store, net29, await new_instance()) == "10.99.0.4"


async def test_release_of_an_instance_without_an_address_does_nothing(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    kept = await new_instance()
    await _allocate(store, net24, kept)
    async with store.write() as s:
        await ipam.release(s, await new_instance())
    async with store.read() as s:
        assert list(await s.scalars(select(Address.instance_id))) == [kept]


async def test_concurrent_allocations_never_share_an_address(
    store: Store, net24: Network, new_instance: NewInstance
) -> None:
    iids = [await new_instance() for _ in range(8)]
    got = await asyncio.gather(*(_allocate(store, net24, iid) for iid in iids))
    assert len(set(got)) == len(got)
