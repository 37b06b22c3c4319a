"""A subnet spanning two nodes (issue 12, controller/overlays.py): two joined nodes
(tests/cluster.py), three tiny VMs in all. The controller drives the VXLAN segment of the
default subnet between the nodes from the store; this is checked with real packets from
inside the guests (typed at their serial consoles: joined nodes serve no metadata yet, so there
is no SSH key to log in with).

Shown: the two agents have namespaces of their own; an instance on node 1 and one on node 2
get addresses in the same subnet (one IPAM), the same gateway and the tunnel's MTU; they reach
each other by address and by name (ping and TCP to the SSH port), through the default group's
rule admitting its own members across nodes; with that rule revoked the same packets are
dropped, and allowed again they pass; another account's instance on the same nodes reaches
neither of them, nor they it (both directions), while its own gateway answers. Then a
non-default VPC's subnet with an instance on each node: its own segment between the VPC's
namespaces, reached by address and name, each node's gateway and metadata answering; and
once the subnet has left node 2, its instance on node 1 moved there live: the subnet's network
made on node 2 for it, its address, gateway and metadata kept, the VPC's namespace gone from
node 1."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.config import Settings
from tests.cluster import Cluster, cluster
from tests.harness import WHOLE_CORE, CliResult, wait_for
from tests.postgres import PostgresServer

MEMORY = "160M"
_marks = itertools.count(1)


@pytest.fixture(scope="module")
def two(postgres_server: PostgresServer) -> Iterator[Cluster]:
    with postgres_server.database() as url, cluster(url, 2) as c:
        c.cli("image", "build", "tiny", timeout=900).ok()
        yield c


@dataclass
class Guest:
    """A guest's serial line on its node: type into the socket, read the log file."""

    name: str
    iid: str
    node: str
    ip: str
    sock: Path
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def type(self, line: str) -> None:
        """Type a line at the console and stay connected until the guest echoed it: QEMU
        takes typed bytes only as fast as the guest's UART drains them, and drops what it
        has not read when the client leaves."""
        before = len(self.text())
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            s.sendall(line.encode() + b"\n")
            with contextlib.suppress(AssertionError):
                wait_for(lambda: line[-12:] in self.text()[before:], 60, what="the echo")
            time.sleep(0.5)

    def prompt(self, timeout: float = 30) -> None:
        """Wait (a while) for the shell's prompt to be the last thing on the console: what
        is typed while the shell is busy with the tty can be cut short."""
        with contextlib.suppress(AssertionError):
            wait_for(lambda: re.search(r"# (\x1b\[6n)?$", self.text().rstrip("\n")), timeout)

    def run(self, command: str, timeout: float = 120) -> bool:
        """Run a shell command in the guest: did it succeed?"""
        mark = f"M{next(_marks)}"
        self.prompt()
        before = len(self.text())
        self.type(f"{command}; echo {mark}=$?")  # the typed line itself does not match
        try:
            m = wait_for(
                lambda: re.search(rf"\b{mark}=(\d+)\b", self.text()[before:]),
                timeout,
                what=f"{self.name}: {command}",
            )
        except AssertionError as err:
            raise AssertionError(f"{err}; {self.name}'s console:\n{self.text()[-1500:]}") from None
        return m.group(1) == "0"


def _cli_as(c: Cluster, keys: tuple[str, str], *args: str) -> CliResult:
    """The CLI as another account (its access key), against the cluster's API."""
    import sys

    env = c.env()
    ca = json.loads((c.state_dir / "admin.credentials").read_text()).get("ca_bundle") or ""
    env.update(
        CORRAL_ACCESS_KEY=keys[0],
        CORRAL_SECRET_KEY=keys[1],
        CORRAL_ENDPOINT=c.url,
        CORRAL_CA_BUNDLE=ca,
    )
    p = subprocess.run(
        ["ip", "netns", "exec", c.lan.outside, sys.executable, "-m", "corral", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    return CliResult(p.returncode, p.stdout, p.stderr)


def _guest(c: Cluster, shown: dict[str, object]) -> Guest:
    node = str(shown["node"]).removeprefix("node-")
    agent = c.agents[node]
    iid = str(shown["id"])
    ns = Settings(state_dir=agent.state_dir).namespace
    return Guest(
        name=str(shown["name"]),
        iid=iid,
        node=node,
        ip=str(shown["private_ip"]),
        sock=Path("/run/corral") / ns / iid / "console.sock",
        log=agent.state_dir / "instances" / iid / "console.log",
    )


def _login(g: Guest) -> None:
    """Log in as root at the console (the tiny image's root has no password)."""
    wait_for(lambda: "login:" in g.text(), 600, what=f"{g.name}'s login prompt")
    g.type("root")
    wait_for(lambda: "built-in shell" in g.text(), 120, what=f"{g.name}'s shell")
    assert g.run("true", 180)


def test_a_subnet_spans_two_nodes(two: Cluster) -> None:
    c = two
    out = c.cli("account", "create", "other").ok().out
    keys = (
        re.search(r"aws_access_key_id\s*=\s*(\S+)", out).group(1),  # type: ignore[union-attr]
        re.search(r"aws_secret_access_key\s*=\s*(\S+)", out).group(1),  # type: ignore[union-attr]
    )
    c.cli("run", "tiny", *WHOLE_CORE, "--name", "a", "--memory", MEMORY, "--node", "host1").ok()
    c.cli("run", "tiny", *WHOLE_CORE, "--name", "b", "--memory", MEMORY, "--node", "host2").ok()
    _cli_as(
        c, keys, "run", "tiny", *WHOLE_CORE, "--name", "x", "--memory", MEMORY, "--node", "host2"
    ).ok()
    a = _guest(c, json.loads(c.cli("show", "a", "--json").ok().out))
    b = _guest(c, json.loads(c.cli("show", "b", "--json").ok().out))
    x = _guest(c, json.loads(_cli_as(c, keys, "show", "x", "--json").ok().out))
    assert (a.node, b.node, x.node) == ("host1", "host2", "host2")

    # each agent has a data-plane namespace of its own (named from its state directory)
    spaces = {Settings(state_dir=ag.state_dir).namespace for ag in c.agents.values()}
    assert len(spaces) == 2, spaces

    # one subnet, one IPAM: the three addresses lie in the default subnet and differ
    listed = set(re.findall(r"\b\d+\.\d+\.\d+\.\d+/\d+\b", c.cli("subnet", "ls").ok().out))
    assert len(listed) == 1, listed  # the default VPC's one subnet (one zone)
    cidr = ipaddress.ip_network(listed.pop())
    assert {ipaddress.ip_address(g.ip) in cidr for g in (a, b, x)} == {True}, (cidr, a, b, x)
    assert len({a.ip, b.ip, x.ip}) == 3
    gateway = str(next(cidr.hosts()))

    for g in (a, b, x):
        _login(g)
    # the same gateway on both nodes
    for g in (a, b):
        assert g.run(f"ip route | grep -q 'default via {gateway}'")

    # across nodes, by address and by name (a's node resolves b, which runs on the other)
    assert a.run(f"ping -c 2 -W 3 {b.ip} >/dev/null"), a.text()[-800:]
    assert b.run(f"ping -c 2 -W 3 {a.ip} >/dev/null")
    assert a.run("ping -c 1 -W 3 b >/dev/null"), a.text()[-800:]
    assert a.run("echo | nc -w 5 b 22 | grep -q SSH-2.0")
    assert b.run("ping -c 1 -W 3 a >/dev/null")  # b's node resolves a, which runs on a's

    # the default group admits its own members on any node; without that rule, nothing
    c.cli("sg", "revoke", "default", "--proto", "all", "--group", "default").ok()
    try:
        assert not a.run(f"ping -c 2 -W 2 {b.ip} >/dev/null")
        assert not b.run("echo | nc -w 4 a 22 | grep -q SSH-2.0")
    finally:
        c.cli("sg", "allow", "default", "--proto", "all", "--group", "default").ok()
    assert a.run(f"ping -c 2 -W 3 {b.ip} >/dev/null")

    # another account on the same two nodes: its gateway answers, our instances do not
    assert x.run(f"ping -c 1 -W 3 {gateway} >/dev/null"), x.text()[-800:]
    for there in (a, b):
        assert not x.run(f"ping -c 2 -W 2 {there.ip} >/dev/null")
        assert not x.run(f"echo | nc -w 3 {there.ip} 22 | grep -q SSH")
        assert not there.run(f"ping -c 2 -W 2 {x.ip} >/dev/null")

    # the tunnel's MTU, from DHCP
    for g in (a, b):
        assert g.run("ip link show eth0 | grep -q 'mtu 1450'"), g.text()[-500:]

    _cli_as(c, keys, "rm", "x").ok()
    c.cli("rm", "a", "b", timeout=300).ok()

    # a non-default VPC's subnet on the same two nodes: its own segment (its own VNI) between
    # the VPC's namespaces there, one IPAM, names, the gateway and metadata on each node
    vid = re.search(r"vpc-[0-9a-f]{17}", c.cli("vpc", "create", "10.66.0.0/16").ok().out)
    assert vid is not None
    sid = re.search(
        r"subnet-[0-9a-f]{17}", c.cli("subnet", "create", vid.group(0), "10.66.1.0/24").ok().out
    )
    assert sid is not None
    for name, host in (("p", "host1"), ("q", "host2")):
        c.cli("run", "tiny", *WHOLE_CORE, "--name", name, "--memory", MEMORY, "--node", host,
              "--subnet", sid.group(0)).ok()  # fmt: skip
    p = _guest(c, json.loads(c.cli("show", "p", "--json").ok().out))
    q = _guest(c, json.loads(c.cli("show", "q", "--json").ok().out))
    assert (p.node, q.node) == ("host1", "host2") and p.ip != q.ip
    assert {p.ip.startswith("10.66.1."), q.ip.startswith("10.66.1.")} == {True}
    live = ["p", "q"]
    try:
        for g in (p, q):
            _login(g)
        for g in (p, q):
            assert g.run("ping -c 1 -W 3 10.66.1.1 >/dev/null"), g.text()[-800:]
            assert g.run(
                "timeout 10 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id "
                f"| grep -qx {g.iid}"
            ), g.text()[-800:]
            assert g.run("ip link show eth0 | grep -q 'mtu 1450'"), g.text()[-500:]
        assert p.run(f"ping -c 2 -W 3 {q.ip} >/dev/null"), p.text()[-800:]
        assert q.run("ping -c 1 -W 3 p >/dev/null"), q.text()[-800:]

        # p moves live to host2 once the subnet has left it: its network is made there for
        # the move, p keeps its address and finds its gateway and metadata there, and the
        # VPC's namespace leaves host1 with it
        c.cli("rm", "q", timeout=300).ok()
        live.remove("q")
        vpc_ns = {
            h: f"{Settings(state_dir=c.agents[h].state_dir).namespace}-{vid.group(0)}"
            for h in ("host1", "host2")
        }
        wait_for(lambda: not Path("/run/netns", vpc_ns["host2"]).exists(), 60, what="host2 left")
        c.cli("migrate", "p", "--to", "host2", "--timeout", "300", timeout=600).ok()
        moved = _guest(c, json.loads(c.cli("show", "p", "--json").ok().out))
        assert (moved.node, moved.ip) == ("host2", p.ip)
        moved.type("")  # a fresh prompt on the console of its new node
        assert moved.run(f"ip -4 addr show eth0 | grep -q 'inet {p.ip}/24'"), moved.text()[-800:]
        assert moved.run("ping -c 1 -W 3 10.66.1.1 >/dev/null"), moved.text()[-800:]
        assert moved.run(
            "timeout 10 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id "
            f"| grep -qx {p.iid}"
        ), moved.text()[-800:]
        assert Path("/run/netns", vpc_ns["host2"]).exists()
        wait_for(lambda: not Path("/run/netns", vpc_ns["host1"]).exists(), 60, what="host1 left")
    finally:
        c.cli("rm", *live, timeout=300).ok()


def test_a_vpcs_subnets_are_routed_on_one_node_and_across_nodes(two: Cluster) -> None:
    """Two subnets of one VPC (issue 12: its namespace on each node routes between them, and
    its router link between nodes): r (subnet 1) and s (subnet 2) on host1, t (subnet 2) on
    host2. r reaches s through host1's namespace, and t across nodes (routed at host1, then
    at host2), by address and by name, both ways; the default group's rule admitting its own
    members is what lets it through, for members of another subnet on another node too."""
    c = two
    vid = re.search(r"vpc-[0-9a-f]{17}", c.cli("vpc", "create", "10.67.0.0/16").ok().out)
    assert vid is not None
    subnets = []
    for cidr in ("10.67.1.0/24", "10.67.2.0/24"):
        sid = re.search(
            r"subnet-[0-9a-f]{17}", c.cli("subnet", "create", vid.group(0), cidr).ok().out
        )
        assert sid is not None
        subnets.append(sid.group(0))
    live = []
    try:
        for name, host, subnet in (
            ("r", "host1", subnets[0]),
            ("s", "host1", subnets[1]),
            ("t", "host2", subnets[1]),
        ):
            c.cli("run", "tiny", *WHOLE_CORE, "--name", name, "--memory", MEMORY, "--node", host,
                  "--subnet", subnet).ok()  # fmt: skip
            live.append(name)
        r, s, t = (_guest(c, json.loads(c.cli("show", n, "--json").ok().out)) for n in live)
        assert (r.node, s.node, t.node) == ("host1", "host1", "host2")
        assert r.ip.startswith("10.67.1.") and s.ip.startswith("10.67.2.")
        for g in (r, s, t):
            _login(g)
        # on one node: routed by the VPC's namespace between its two bridges
        assert r.run(f"ping -c 2 -W 3 {s.ip} >/dev/null"), r.text()[-800:]
        assert s.run(f"ping -c 2 -W 3 {r.ip} >/dev/null"), s.text()[-800:]
        # across nodes and subnets: routed at the sender's node, over the VPC's router link,
        # then at the receiver's; names resolve across the VPC's subnets
        assert r.run(f"ping -c 2 -W 3 {t.ip} >/dev/null"), r.text()[-800:]
        assert t.run(f"ping -c 2 -W 3 {r.ip} >/dev/null"), t.text()[-800:]
        assert r.run("ping -c 1 -W 3 t >/dev/null"), r.text()[-800:]
        assert r.run("echo | nc -w 5 t 22 | grep -q SSH-2.0"), r.text()[-800:]
        assert t.run("echo | nc -w 5 r 22 | grep -q SSH-2.0"), t.text()[-800:]
        # the security groups judge routed flows as bridged ones, on both nodes: without the
        # VPC's default group's rule admitting its own members, nothing passes
        groups = json.loads(c.cli("sg", "ls", "--json").ok().out)
        gid = next(g["id"] for g in groups if g["name"] == "default" and g["vpc"] == vid.group(0))
        c.cli("sg", "revoke", gid, "--proto", "all", "--group", gid).ok()
        try:
            assert not r.run(f"ping -c 2 -W 2 {t.ip} >/dev/null")
            assert not r.run(f"ping -c 2 -W 2 {s.ip} >/dev/null")
            assert not t.run("echo | nc -w 4 r 22 | grep -q SSH-2.0")
        finally:
            c.cli("sg", "allow", gid, "--proto", "all", "--group", gid).ok()
        assert r.run(f"ping -c 2 -W 3 {t.ip} >/dev/null"), r.text()[-800:]
        # an address of the VPC that no instance has is refused in the VPC's namespace
        # (never sent out of the uplink); the link is there while the VPC spans two nodes
        ns1 = f"{Settings(state_dir=c.agents['host1'].state_dir).namespace}-{vid.group(0)}"
        routes = subprocess.run(
            ["ip", "-n", ns1, "route", "show", "10.67.0.0/16"], capture_output=True, text=True
        ).stdout
        assert routes.startswith("unreachable 10.67.0.0/16"), routes
        assert _router_links(ns1), "no router link on host1"
        c.cli("rm", "t", timeout=300).ok()
        live.remove("t")
        # the VPC left host2: host1's router keeps no link
        wait_for(lambda: not _router_links(ns1), 60, what="host1's router link removed")
        assert r.run(f"ping -c 2 -W 3 {s.ip} >/dev/null"), r.text()[-800:]
    finally:
        if live:
            c.cli("rm", *live, timeout=300).ok()


def _router_links(namespace: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-n", namespace, "-json", "link", "show"], capture_output=True, text=True
    ).stdout
    return [x["ifname"] for x in json.loads(out or "[]") if x["ifname"].startswith("vr-")]
