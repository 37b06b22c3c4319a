"""dnsmasq holds leases forever (they are infinite): an address freed by a terminated instance
must have its lease released, or the next instance to get the address gets no DHCP answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.node.net import dnsmasq
from corral.node.net.dnsmasq import Dnsmasq, HostEntry


def _dm(tmp_path: Path) -> Dnsmasq:
    return Dnsmasq(
        namespace="ns",
        bridge="br0",
        cidr="10.88.0.0/24",
        gateway="10.88.0.1",
        domain="corral.internal",
        directory=tmp_path,
    )


def test_leases_held_reads_mac_address_and_client_id(tmp_path: Path) -> None:
    dm = _dm(tmp_path)
    dm.leases.write_text(
        "0 52:54:00:aa:aa:aa 10.88.0.10 old 01:52:54:00:aa:aa:aa\n"
        "0 52:54:00:bb:bb:bb 10.88.0.11 web2 *\n"
        "duid 00:01:00:01:aa\n"
    )
    assert dm.leases_held() == [
        ("52:54:00:aa:aa:aa", "10.88.0.10", "01:52:54:00:aa:aa:aa"),
        ("52:54:00:bb:bb:bb", "10.88.0.11", ""),
    ]


async def test_only_leases_no_host_wants_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = _dm(tmp_path)
    dm.leases.write_text(
        "0 52:54:00:aa:aa:aa 10.88.0.10 old 01:52:54:00:aa:aa:aa\n"
        "0 52:54:00:bb:bb:bb 10.88.0.11 web2 01:52:54:00:bb:bb:bb\n"
    )
    calls: list[list[str]] = []

    async def fake_arun(argv: list[str], **_kw: object) -> str:
        calls.append(list(argv))
        return ""

    monkeypatch.setattr(dnsmasq, "arun", fake_arun)
    monkeypatch.setattr(dnsmasq, "need", lambda binary, _pkg: binary)
    hosts = [
        HostEntry(mac="52:54:00:cc:cc:cc", address="10.88.0.10", names=("new",)),
        HostEntry(mac="52:54:00:bb:bb:bb", address="10.88.0.11", names=("web2",)),
    ]
    released = await dm.release_stale(hosts)
    assert released == ["10.88.0.10"]
    assert calls == [
        [
            "ip",
            "netns",
            "exec",
            "ns",
            "dhcp_release",
            "br0",
            "10.88.0.10",
            "52:54:00:aa:aa:aa",
            "01:52:54:00:aa:aa:aa",
        ]
    ]
