"""The tc caps as the kernel enforces them, without a VM: two namespaces joined by a veth, one
end standing for an instance's tap (in the node's namespace), the other for the guest. A
burst bucket lets a quiet port send its bucket without being held; beyond it the port is held
to its rate, both to the guest (the tap's tbf) and from it (the ifb behind the tap's ingress)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from corral.node.net import shaping
from corral.node.spec import Bucket

KiB, MiB = 1 << 10, 1 << 20
NODE_IP, GUEST_IP = "192.0.2.1", "192.0.2.2"  # inside the test's namespaces only

RECEIVER = (
    "import socket,sys,time,json\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], 7100)); s.listen(1); s.settimeout(30)\n"
    "print('READY', flush=True)\n"
    "c,a=s.accept(); c.settimeout(30); n=0; t0=None\n"
    "while True:\n"
    "    d=c.recv(65536)\n"
    "    if not d: break\n"
    "    t0=t0 or time.monotonic(); n+=len(d)\n"
    "print(json.dumps({'bytes': n, 'seconds': time.monotonic()-(t0 or 0)}), flush=True)\n"
)
SENDER = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1], 7100), timeout=30)\n"
    "c.sendall(b'x'*int(sys.argv[2])); c.close()\n"
)


class Pair:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 0xFFFF:04x}{int(time.time() * 1000) % 0xFFFF:04x}"
        self.node, self.guest = f"crsh{tag}n", f"crsh{tag}g"
        self.tap, self.peer = f"t{tag}sh", f"g{tag}sh"

    def up(self) -> None:
        for ns in (self.node, self.guest):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            [
                "ip",
                "-n",
                self.node,
                "link",
                "add",
                self.tap,
                "type",
                "veth",
                "peer",
                "name",
                self.peer,
                "netns",
                self.guest,
            ],
            check=True,
        )
        for ns, dev, ip in ((self.node, self.tap, NODE_IP), (self.guest, self.peer, GUEST_IP)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)

    def down(self) -> None:
        for ns in (self.node, self.guest):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def transfer(self, sender_ns: str, receiver_ns: str, to_ip: str, n: int) -> dict:
        rx = subprocess.Popen(
            ["ip", "netns", "exec", receiver_ns, "python3", "-c", RECEIVER, to_ip],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert rx.stdout is not None and rx.stdout.readline().strip() == "READY"
            subprocess.run(
                ["ip", "netns", "exec", sender_ns, "python3", "-c", SENDER, to_ip, str(n)],
                check=True,
                timeout=60,
            )
            out, _ = rx.communicate(timeout=60)
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.wait()
        return json.loads(out)

    def tbf(self, dev: str) -> dict[str, int]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.node, "tc", "-s", "qdisc", "show", "dev", dev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        m = re.search(
            r"qdisc tbf .*?\n\s*Sent (\d+) bytes \d+ pkt \(dropped \d+, overlimits (\d+)", out
        )
        assert m, f"no tbf on {dev}: {out}"
        return {"sent": int(m[1]), "overlimits": int(m[2])}


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        p.up()
        yield p
    finally:
        p.down()


def test_burst_bucket_then_the_rate_each_way(pair: Pair) -> None:
    to_guest = Bucket(rate_mbit=16, burst_bytes=1 * MiB)  # 2 MB/s once the bucket is spent
    from_guest = Bucket(rate_mbit=8, burst_bytes=256 * KiB, peak_mbit=400)  # 1 MB/s
    asyncio.run(shaping.apply(pair.node, pair.tap, to_guest, from_guest))
    ifb = shaping.ifb_name(pair.tap)

    # to the guest: half the bucket passes without the tbf ever holding a packet back
    pair.transfer(pair.node, pair.guest, GUEST_IP, 512 * KiB)
    first = pair.tbf(pair.tap)
    assert first["sent"] >= 512 * KiB and first["overlimits"] == 0, first
    # then 4 MiB: the rest of the bucket, and the remainder at 2 MB/s at most
    got = pair.transfer(pair.node, pair.guest, GUEST_IP, 4 * MiB)
    after = pair.tbf(pair.tap)
    assert got["bytes"] == 4 * MiB and after["overlimits"] > 0, (got, after)
    # (4 MiB - the ~0.5 MiB left in the bucket) at 2e6 B/s is ~1.8 s; a slower machine only
    # makes it longer, so a floor is safe
    assert got["seconds"] > 1.2, got

    # from the guest: the tap's ingress goes through the ifb's bucket
    got = pair.transfer(pair.guest, pair.node, NODE_IP, 2 * MiB)
    held = pair.tbf(ifb)
    assert got["bytes"] == 2 * MiB and held["sent"] >= 2 * MiB and held["overlimits"] > 0
    assert got["seconds"] > 1.2, got  # (2 MiB - 256 KiB) at 1e6 B/s is ~1.8 s

    # caps lifted: the qdiscs and the ifb go
    asyncio.run(shaping.apply(pair.node, pair.tap, None, None))
    links = subprocess.run(
        ["ip", "-n", pair.node, "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert ifb not in {x["ifname"] for x in json.loads(links)}
    qd = subprocess.run(
        ["ip", "netns", "exec", pair.node, "tc", "qdisc", "show", "dev", pair.tap],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tbf" not in qd and "ingress" not in qd, qd
