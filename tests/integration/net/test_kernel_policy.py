"""The node's network as the kernel enforces it, shown with real packets: instances reach the
outside through SNAT; a guest cannot pass for another (address or MAC); IMDSv2 from a guest;
bandwidth caps."""

from __future__ import annotations

import json

from tests.harness import Daemon
from tests.integration.net.conftest import Listener, Uplinked

OUTSIDE = "198.51.100.254"  # the outside router (the uplink's far end)
NODE_PUBLIC = "198.51.100.1"


def _show(d: Daemon, name: str) -> dict:
    return json.loads(d.cli("show", name, "--json").ok().out)


def _listen(up: Uplinked, port: int, seconds: float) -> Listener:
    """A TCP listener in the outside namespace: who connected, how much, how fast."""
    code = (
        "import socket,time,json\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{OUTSIDE}', {port})); s.listen(1); s.settimeout({seconds})\n"
        "print('READY', flush=True)\n"
        "c,a=s.accept(); c.settimeout(60); n=0; t0=None\n"
        "while True:\n"
        "    d=c.recv(65536)\n"
        "    if not d: break\n"
        "    t0=t0 or time.monotonic(); n+=len(d)\n"
        "print(json.dumps({'peer': a[0], 'bytes': n, 'seconds': time.monotonic()-(t0 or 0)}))\n"
    )
    return up.listener(code)


def test_instances_reach_the_outside_through_snat(uplinked: Uplinked) -> None:
    d = uplinked.corral
    d.cli("run", "tiny", "--name", "snat1", "--memory", "128M").ok()
    assert "0% packet loss" in d.ssh("snat1", f"ping -c 2 -W 2 {OUTSIDE}").ok().out
    listener = _listen(uplinked, 7001, 60)
    d.ssh("snat1", f"echo hello | nc {OUTSIDE} 7001").ok()
    seen = listener.result(90)
    # the outside sees the node's public address, never the private one
    assert seen["peer"] == NODE_PUBLIC and seen["bytes"] == 6
    d.cli("rm", "--force", "snat1").ok()


def test_a_guest_cannot_pass_for_another_instance(uplinked: Uplinked) -> None:
    d = uplinked.corral
    d.cli("run", "tiny", "--name", "honest", "--memory", "128M").ok()
    d.cli("run", "tiny", "--name", "liar", "--memory", "128M").ok()
    victim = _show(d, "honest")
    liar = _show(d, "liar")
    gw = d.settings.subnet.rsplit(".", 1)[0] + ".1"
    v = victim["private_ip"]
    script = (
        # the probes work when the guest does not lie: the gateway answers its pings
        f"ping -c 1 -W 2 {gw} >/dev/null 2>&1 && echo PLAIN-PING-OK; "
        f"ip addr add {v}/32 dev eth0; "
        f"ping -c 1 -W 1 -I {v} {gw} >/dev/null 2>&1 "
        "&& echo SPOOF-PING-OK || echo SPOOF-PING-BLOCKED; "
        f"ip route replace 169.254.169.254 via {gw} src {v}; "
        "timeout 3 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id "
        "&& echo ' SPOOF-MD-OK' || echo SPOOF-MD-BLOCKED; "
        f"ip route del 169.254.169.254; ip addr del {v}/32 dev eth0; "
        "wget -q -O - http://169.254.169.254/latest/meta-data/instance-id; echo"
    )
    out = d.ssh("liar", script).ok().out
    assert "PLAIN-PING-OK" in out, out
    assert "SPOOF-PING-BLOCKED" in out and "SPOOF-MD-BLOCKED" in out
    assert victim["id"] not in out  # never the victim's identity
    assert liar["id"] in out  # its own, once it stops lying
    # a forged MAC passes nothing either (the SSH session stalls until it is restored)
    script_mac = (
        f"ping -c 1 -W 2 {gw} > /dev/null 2>&1; echo before=$? > /tmp/b; "
        "ip link set eth0 address 52:54:00:de:ad:01; "
        f"ping -c 1 -W 2 {gw} > /tmp/r 2>&1; echo rc=$? >> /tmp/r; "
        f"ip link set eth0 address {liar['mac']}; cat /tmp/b /tmp/r"
    )
    out = d.ssh("liar", script_mac, timeout=180).ok().out
    assert "before=0" in out and "rc=1" in out, out  # the same ping worked unforged
    d.cli("rm", "--force", "honest", "liar").ok()


def test_imdsv2_tokens_from_inside_a_guest(uplinked: Uplinked) -> None:
    d = uplinked.corral
    d.cli(
        "run",
        "tiny",
        "--name",
        "imds2",
        "--memory",
        "128M",
        "--imds-tokens",
        "required",
        "--imds-hop-limit",
        "2",
    ).ok()
    info = _show(d, "imds2")
    # busybox nc quits at the end of its input: keep it open a moment for the answer
    put = (
        "{ printf 'PUT /latest/api/token HTTP/1.0\\r\\n"
        "X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; sleep 1; } "
        "| nc 169.254.169.254 80 | tail -n 1"
    )
    script = (
        f"T=$({put}); "
        "wget -q -O - http://169.254.169.254/latest/meta-data/instance-id >/dev/null 2>&1 "
        "&& echo V1-OK || echo V1-REFUSED; "
        'wget -q -O - --header "X-aws-ec2-metadata-token: $T" '
        "http://169.254.169.254/latest/meta-data/instance-id; echo"
    )
    out = d.ssh("imds2", script).ok().out
    assert "V1-REFUSED" in out and info["id"] in out
    # the token's answer leaves with the instance's hop limit as TTL
    rules = d.nsexec("nft", "list", "chain", "inet", "corral", "output").stdout
    assert f"ip daddr {info['private_ip']} ip ttl set 2" in rules
    d.cli("rm", "--force", "imds2").ok()


def test_bandwidth_cap(uplinked: Uplinked) -> None:
    d = uplinked.corral
    d.cli("run", "tiny", "--name", "capped", "--memory", "128M", "--net-limit", "4").ok()
    listener = _listen(uplinked, 7002, 60)
    d.ssh(
        "capped", f"dd if=/dev/zero bs=1k count=1024 2>/dev/null | nc {OUTSIDE} 7002", timeout=120
    ).ok()
    seen = listener.result(120)
    mbit = seen["bytes"] * 8 / seen["seconds"] / 1e6
    assert seen["bytes"] == 1 << 20
    assert mbit < 4 * 1.25, f"{mbit:.1f} Mbit/s through a 4 Mbit/s cap"
    d.cli("rm", "--force", "capped").ok()
