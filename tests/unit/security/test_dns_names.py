"""Issue 9 §2, DNS: two accounts may name instances alike, and each name resolves only to the
asker's account's instance: DNS records are qualified by account, each guest's DHCP domain is
its account's zone, and dnsmasq takes no name from a guest or from the DHCP host table. (The
real resolution, with guests of two accounts, is in tests/integration/test_security.py.)"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from corral.controller.service import Controller
from corral.node.fake import FakeNode
from corral.node.net.dnsmasq import Dnsmasq, HostEntry
from tests.unit.helpers import admin, finish, req
from tests.unit.security.conftest import Tenant

TenantFactory = Callable[[str], AbstractAsyncContextManager[Tenant]]


async def test_same_names_in_two_accounts_are_two_records_each_in_its_zone(
    ctrl: Controller, node: FakeNode, tenant: TenantFactory
) -> None:
    async with tenant("bob") as (bob, _):
        ids = {}
        for who in (admin(ctrl), bob):
            inst, op = await ctrl.instances.run(who, req(name="web"))
            await finish(ctrl, op)
            ids[who.account_id] = inst.id
        (records,) = node.hosts.values()
        by_id = {r.names[0].split(".")[0]: r for r in records}
        all_names = [n for r in records for n in r.names]
        assert "web.corral.internal" not in all_names and "web" not in all_names
        for account, iid in ids.items():
            r = by_id[iid]
            assert r.names == [f"{iid}.corral.internal", f"web.{account}.corral.internal"]
            assert (r.hostname, r.zone) == ("web", f"{account}.corral.internal")
        assert len(set(all_names)) == len(all_names)  # no name answers with two addresses


def test_dnsmasq_files_give_each_guest_its_zone_and_no_dns_name_from_dhcp(tmp_path: Path) -> None:
    d = Dnsmasq(
        namespace="ns",
        bridge="br",
        cidr="10.88.0.0/24",
        gateway="10.88.0.1",
        domain="corral.internal",
        directory=tmp_path,
    )
    assert "--dhcp-ignore-names" in d.argv()
    assert f"--dhcp-optsfile={tmp_path / 'dhcp-opts'}" in d.argv()
    d._write_hosts(
        [
            HostEntry(
                "52:54:00:00:00:0A",
                "10.88.0.10",
                ("i-1.corral.internal", "web.111111111111.corral.internal"),
                "web",
                "111111111111.corral.internal",
            ),
            HostEntry(
                "52:54:00:00:00:0b",
                "10.88.0.11",
                ("i-2.corral.internal", "web.222222222222.corral.internal"),
                "web",
                "222222222222.corral.internal",
            ),
        ]
    )
    dhcp = (tmp_path / "dhcp-hosts").read_text().splitlines()
    assert dhcp == [
        "52:54:00:00:00:0A,set:m52540000000a,10.88.0.10,infinite",
        "52:54:00:00:00:0b,set:m52540000000b,10.88.0.11,infinite",
    ]  # no host name: dnsmasq would put it in DNS, unqualified
    opts = (tmp_path / "dhcp-opts").read_text().splitlines()
    assert "tag:m52540000000a,option:domain-name,111111111111.corral.internal" in opts
    assert "tag:m52540000000b,option:domain-search,222222222222.corral.internal" in opts
    assert not any("option:hostname" in o for o in opts)  # dnsmasq refuses it in this file
    hosts = (tmp_path / "hosts").read_text()
    assert (
        hosts.splitlines()[0] == "10.88.0.10 i-1.corral.internal web.111111111111.corral.internal"
    )
