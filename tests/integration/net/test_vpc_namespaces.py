"""Non-default VPCs in a namespace of their own on the node (issue 12, controller/networks.py),
checked with real packets from inside three tiny guests on one node (the shared uplinked
daemon): two accounts each make a VPC with the SAME CIDR and run an instance at the SAME
address in it; the second account runs one more instance in its VPC.

Shown: each guest gets its address by DHCP from its own subnet, reaches its own gateway and
its metadata service (its own instance id), resolves names in its VPC and reaches the outside
world by SNAT through the node; the second account's two guests reach each other by name;
the first account's guest reaches neither of them (ping, so ARP too) and no neighbour entry of
theirs appears on either side. Deleting a subnet or VPC in use is a DependencyViolation; once
the last instance of a VPC leaves the node, its namespace is gone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.harness import WHOLE_CORE, CliResult, Daemon, wait_for
from tests.integration.net.conftest import Uplinked
from tests.integration.net.test_groups_and_eips import _collector
from tests.integration.test_vpc_span import Guest, _login

MEMORY = "160M"
CIDR, SUBNET = "10.77.0.0/16", "10.77.1.0/24"
SAME, OTHER, GATEWAY = "10.77.1.10", "10.77.1.11", "10.77.1.1"
OUTSIDE = "198.51.100.254"  # the outside namespace's end of the node's uplink


def _as(d: Daemon, keys: tuple[str, str] | None, *args: str, timeout: float = 300) -> CliResult:
    env = d.env()
    if keys is not None:
        env.update(CORRAL_ACCESS_KEY=keys[0], CORRAL_SECRET_KEY=keys[1])
    p = subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    return CliResult(p.returncode, p.stdout, p.stderr)


def _vpc(d: Daemon, keys: tuple[str, str] | None) -> tuple[str, str]:
    vid = re.search(r"vpc-[0-9a-f]{17}", _as(d, keys, "vpc", "create", CIDR).ok().out)
    assert vid is not None
    sid = re.search(
        r"subnet-[0-9a-f]{17}", _as(d, keys, "subnet", "create", vid.group(0), SUBNET).ok().out
    )
    assert sid is not None
    return vid.group(0), sid.group(0)


def _run(d: Daemon, keys: tuple[str, str] | None, name: str, subnet: str, ip: str) -> Guest:
    _as(d, keys, "run", "tiny", *WHOLE_CORE, "--name", name, "--memory", MEMORY, "--subnet", subnet,
        "--address", ip).ok()  # fmt: skip
    shown = json.loads(_as(d, keys, "show", name, "--json").ok().out)
    assert shown["private_ip"] == ip and shown["subnet_id"] == subnet, shown
    ns = d.settings.namespace
    iid = str(shown["id"])
    return Guest(
        name=name,
        iid=iid,
        node="local",
        ip=ip,
        sock=Path("/run/corral") / ns / iid / "console.sock",
        log=d.state_dir / "instances" / iid / "console.log",
    )


def _mac(g: Guest) -> str:
    spec = json.loads((g.log.parent / "spec.json").read_text())
    return str(spec["mac"]).lower()


def _netns(name: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "-n", name, *argv], capture_output=True, text=True, timeout=30
    ).stdout.lower()


def test_two_accounts_same_vpc_cidr_same_address_are_isolated(uplinked: Uplinked) -> None:
    d = uplinked.corral
    out = d.cli("account", "create", "vpcns-other").ok().out
    keys = (
        re.search(r"aws_access_key_id\s*=\s*(\S+)", out).group(1),  # type: ignore[union-attr]
        re.search(r"aws_secret_access_key\s*=\s*(\S+)", out).group(1),  # type: ignore[union-attr]
    )
    vpc_a, sub_a = _vpc(d, None)
    vpc_b, sub_b = _vpc(d, keys)
    a = _run(d, None, "va", sub_a, SAME)
    b = _run(d, keys, "vb", sub_b, SAME)
    b2 = _run(d, keys, "vb2", sub_b, OTHER)
    node_ns = d.settings.namespace
    ns_a, ns_b = f"{node_ns}-{vpc_a}", f"{node_ns}-{vpc_b}"
    assert Path("/run/netns", ns_a).exists() and Path("/run/netns", ns_b).exists()
    try:
        # in use: DependencyViolation (409), nothing removed
        busy = _as(d, None, "subnet", "rm", sub_a)
        assert busy.rc != 0 and "still has instances" in busy.out + busy.err, busy
        busy = _as(d, None, "vpc", "rm", vpc_a)
        assert busy.rc != 0 and "still has subnets" in busy.out + busy.err, busy

        for g in (a, b, b2):
            _login(g)
        for g in (a, b, b2):
            # its address from its own subnet's DHCP, its own gateway, its metadata
            assert g.run(f"ip -4 addr show eth0 | grep -q 'inet {g.ip}/24'"), g.text()[-800:]
            assert g.run(f"ping -c 1 -W 3 {GATEWAY} >/dev/null"), g.text()[-800:]
            assert g.run(
                "timeout 10 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id "
                f"| grep -qx {g.iid}"
            ), g.text()[-800:]
            # the outside world, by SNAT through the node
            assert g.run(f"ping -c 1 -W 3 {OUTSIDE} >/dev/null"), g.text()[-800:]
        # `corral ssh`: the API's stream connects from inside the VPC's namespace
        assert "va" in d.ssh("va", "hostname").ok().out
        # names resolve inside the VPC, and its members reach each other
        assert b.run("ping -c 1 -W 3 vb2 >/dev/null"), b.text()[-800:]
        assert b2.run(f"ping -c 1 -W 3 {SAME} >/dev/null"), b2.text()[-800:]
        # the other account's VPC, same CIDR: nothing of it is reachable, nor known
        assert not a.run(f"ping -c 2 -W 2 {OTHER} >/dev/null")
        assert not a.run("ping -c 1 -W 2 vb2 >/dev/null")
        macs_a, macs_b = {_mac(a)}, {_mac(b), _mac(b2)}
        assert a.run("ip neigh > /tmp/neigh")
        assert not any(a.run(f"grep -qi {m} /tmp/neigh") for m in macs_b)
        assert b2.run("ip neigh > /tmp/neigh")
        assert not b2.run(f"grep -qi {_mac(a)} /tmp/neigh")
        # each VPC's namespace knows only its own guests
        neigh_a, neigh_b = _netns(ns_a, "neigh"), _netns(ns_b, "neigh")
        assert not any(m in neigh_a for m in macs_b), neigh_a
        assert not any(m in neigh_b for m in macs_a), neigh_b
        assert _mac(b2) in neigh_b  # it did answer its own VPC
        _elastic_ip_of_a_vpc_instance(uplinked, vpc_a, a, b)
        # without DNS hostnames the VPC's names are gone (in force when the CLI answers); its
        # addresses still answer (the name above did: the probe works)
        _as(d, keys, "vpc", "set", vpc_b, "--no-dns-hostnames").ok()
        assert not b.run("ping -c 1 -W 3 vb2 >/dev/null"), b.text()[-800:]
        assert b.run(f"ping -c 1 -W 3 {OTHER} >/dev/null"), b.text()[-800:]
    finally:
        _as(d, keys, "rm", "vb", "vb2", timeout=600).ok()
        d.cli("rm", "va", timeout=600).ok()
    # the last instance gone, the VPC's namespace leaves the node
    wait_for(lambda: not Path("/run/netns", ns_a).exists(), 60, what="the VPC namespace gone")
    assert not Path("/run/netns", ns_b).exists()
    _as(d, None, "subnet", "rm", sub_a).ok()
    _as(d, None, "vpc", "rm", vpc_a).ok()


def _seen_from(up: Uplinked, g: Guest, port: int) -> list[str]:
    """The source addresses the outside namespace saw on TCP connections from ``g``: a
    listener there, ended by an END of its own once ``g`` has sent (so it was listening)."""
    listener = _collector(up, "tcp", port)
    g.run(f"echo from-{g.name} | timeout 5 nc {OUTSIDE} {port}; true")
    end = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); "
        f"s.connect(('{OUTSIDE}', {port})); s.sendall(b'END'); s.close()"
    )
    assert up.outside_exec("python3", "-c", end).returncode == 0
    got = listener.result(150)["messages"]
    assert "END" in [m["data"] for m in got], got
    return [str(m["from"]) for m in got if m["data"] == f"from-{g.name}"]


def _elastic_ip_of_a_vpc_instance(up: Uplinked, vpc_a: str, a: Guest, b: Guest) -> None:
    """An elastic IP on ``a`` (in its VPC's namespace): the outside reaches it by that address
    (the node routes it into the VPC, the VPC maps it to ``a``) and ``a``'s new flows leave
    with it; ``b``, at the same private address in another account's VPC, is untouched (its
    flows leave by the node's own address), and the address stops answering when taken away."""
    d = up.corral
    groups = json.loads(d.cli("sg", "ls", "--json").ok().out)
    (sg,) = [g["id"] for g in groups if g["vpc"] == vpc_a and g["name"] == "default"]
    out = d.cli("ip", "allocate").ok().out
    eip = re.search(r"address (\S+) allocated", out).group(1)  # type: ignore[union-attr]
    # before it points anywhere, and before a's group lets the outside in: silence
    assert up.outside_exec("ping", "-c", "1", "-W", "2", eip).returncode != 0
    d.cli("ip", "associate", eip, a.name).ok()
    assert up.outside_exec("ping", "-c", "1", "-W", "2", eip).returncode != 0  # its group
    d.cli("sg", "allow", sg, "--proto", "icmp", "--cidr", "0.0.0.0/0").ok()
    assert up.outside_exec("ping", "-c", "2", "-W", "3", eip).returncode == 0
    assert _seen_from(up, a, 7301) == [eip]
    seen_b = _seen_from(up, b, 7302)
    assert len(seen_b) == 1 and seen_b[0] != eip, seen_b  # the node's own address (SNAT)
    d.cli("ip", "disassociate", eip).ok()
    assert up.outside_exec("ping", "-c", "1", "-W", "2", eip).returncode != 0
    assert _seen_from(up, a, 7303) == seen_b  # back to the node's address
    d.cli("ip", "release", eip).ok()
