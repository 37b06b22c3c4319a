"""A terminated instance's DHCP lease must not keep its address from the next instance
(found by the EC2 integration tests: run, terminate, run again got no DHCP lease)."""

from __future__ import annotations

from pathlib import Path

from corral.node.net.dnsmasq import Dnsmasq, HostEntry


def test_leases_of_macs_no_host_wants_are_stale(tmp_path: Path) -> None:
    dm = Dnsmasq(namespace="x", bridge="b", cidr="10.0.0.0/24", gateway="10.0.0.1",
                 domain="d", directory=tmp_path)
    dm.leases.write_text("0 52:54:00:aa:aa:aa 10.0.0.10 old *\n"
                         "0 52:54:00:bb:bb:bb 10.0.0.11 keep *\n")
    hosts = [HostEntry("52:54:00:cc:cc:cc", "10.0.0.10", ("new",)),
             HostEntry("52:54:00:BB:BB:BB", "10.0.0.11", ("keep",))]
    stale, kept = dm.stale_leases(hosts)
    assert stale and kept == "0 52:54:00:bb:bb:bb 10.0.0.11 keep *\n"
    dm.leases.write_text(kept)
    assert dm.stale_leases(hosts) == (False, kept)
