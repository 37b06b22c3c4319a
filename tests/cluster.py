"""A data-centre LAN for multi-node tests, made of network namespaces on this machine: a "lan"
namespace holding the bridge that stands for the LAN's switch, N "host" namespaces each joined
to it by a veth with an underlay address from 192.0.2.0/24 (192.0.2.11, .12, …), and an
"outside" namespace standing for the internet (on the LAN at 192.0.2.254, the hosts' default
route). Every name carries a tag unique to the run; everything is removed on exit, also when the
body or the set-up fails. Later work starts one agent process per host namespace
(``ip netns exec <host.netns> corral agent …``)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

UNDERLAY = ipaddress.ip_network("192.0.2.0/24")  # TEST-NET-1: never a real network
FIRST_HOST = 11
OUTSIDE_ADDRESS = ipaddress.ip_address("192.0.2.254")
BRIDGE = "lan0"
HOST_IFACE = "eth0"  # the underlay link's name inside each host namespace
PREFIX = "ccl"  # every namespace of these LANs: ccl<pid>-<random>-<role>


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


def namespaces() -> set[str]:
    """The network namespaces that exist now (by name)."""
    out = subprocess.run(
        ["ip", "-json", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return {n["name"] for n in json.loads(out or "[]")}


@dataclass(frozen=True)
class Host:
    """One "hypervisor host": its namespace and its address on the underlay."""

    name: str  # host1, host2, …
    netns: str
    address: str

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace (an argv list, never a shell)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@dataclass
class Lan:
    tag: str
    netns: str  # the LAN's own namespace (the bridge)
    outside: str  # the namespace standing for the internet
    hosts: list[Host] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return [self.netns, self.outside, *(h.netns for h in self.hosts)]


@contextlib.contextmanager
def lan(hosts: int = 3) -> Iterator[Lan]:
    """Build the LAN with ``hosts`` host namespaces; tear it all down on exit."""
    if not 1 <= hosts <= UNDERLAY.num_addresses - FIRST_HOST - 2:
        raise ValueError(f"hosts={hosts}: between 1 and {UNDERLAY.num_addresses - FIRST_HOST - 2}")
    sweep_stale()
    # the tag: the test process's pid (for the sweep) and a random part
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    net = Lan(tag=tag, netns=f"{PREFIX}{tag}-lan", outside=f"{PREFIX}{tag}-out")
    made: list[str] = []
    try:
        for ns in (net.netns, net.outside):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", net.netns, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", net.netns, "link", "set", BRIDGE, "up")
        _attach(net, net.outside, "out", OUTSIDE_ADDRESS)
        for n in range(1, hosts + 1):
            host = Host(
                name=f"host{n}",
                netns=f"{PREFIX}{tag}-h{n}",
                address=str(UNDERLAY.network_address + FIRST_HOST + n - 1),
            )
            _ip("netns", "add", host.netns)
            made.append(host.netns)
            net.hosts.append(host)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _attach(net, host.netns, f"h{n}", ipaddress.ip_address(host.address))
            _ip("-n", host.netns, "route", "add", "default", "via", str(OUTSIDE_ADDRESS))
        yield net
    finally:
        teardown(made)


def _attach(
    net: Lan, ns: str, port: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    """A veth from the LAN's bridge (port ``port``) to ``HOST_IFACE`` in ``ns``, addressed."""
    _ip(
        "-n", net.netns, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE,
        "netns", ns,
    )  # fmt: skip
    _ip("-n", net.netns, "link", "set", port, "master", BRIDGE, "up")
    _ip("-n", ns, "addr", "add", f"{address}/{UNDERLAY.prefixlen}", "dev", HOST_IFACE)
    _ip("-n", ns, "link", "set", HOST_IFACE, "up")


def sweep_stale() -> None:
    """Delete the LANs of test processes that are gone (killed before their teardown ran)."""
    for ns in namespaces():
        m = re.fullmatch(rf"{PREFIX}(\d+)-[0-9a-f]+-\w+", ns)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)


def teardown(names: list[str]) -> None:
    """Delete the namespaces (their links, bridge and addresses go with them)."""
    for ns in reversed(names):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
