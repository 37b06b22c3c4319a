"""High availability end to end on the cluster harness (tests/cluster.py): PostgreSQL, the
controller in the LAN's outside namespace, three agents joined over mTLS, each in its host
namespace; the replicas' NBD traffic crosses the underlay. One tiny guest in all, booted
twice (on its primary, then on its secondary).

`corral run --ha` on host1: the scheduler puts the replica on another node and the reconciler
brings it in sync. The guest appends numbered, checksummed, fsynced records and prints each
number once its sync returned (the console log, read from outside the node, is the observer).
Then host1's agent is SIGKILLed, its QEMU too, and its link taken down: the controller finds
the node unreachable and fails the instance over; it runs on its secondary with the same name,
address and MAC, every acknowledged record on its disk, and is replicated again to the third
node."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import config
from tests.cluster import Agent, Cluster, cluster
from tests.harness import WHOLE_CORE, wait_for
from tests.postgres import PostgresServer

NODE_TIMEOUT = 6  # seconds: the controller's node_timeout here

# one writer only (mkdir is atomic), so the line may be typed again when the serial line lost it
WRITER = (
    'mkdir /w.lock && { i=0; while :; do i=$((i+1)); r="rec $i"; '
    'echo "$r $(echo "$r" | md5sum | cut -c1-8)" >> /w.log; sync; echo "W$i"; '
    "sleep 0.2; done & }"
)
CHECK = (
    "sync; echo 3 > /proc/sys/vm/drop_caches; n=0; bad=0; "
    'while read a b c; do n=$((n+1)); [ "$b" = "$n" ] || bad=1; '
    '[ "$(echo "rec $b" | md5sum | cut -c1-8)" = "$c" ] || bad=1; done < /w.log; '
    'echo "CHECK n=$n bad=$bad mac=$(cat /sys/class/net/eth0/address)"'
)


@pytest.fixture(scope="module")
def three(postgres_server: PostgresServer) -> Iterator[Cluster]:
    settings = {"node_timeout": NODE_TIMEOUT, "reconcile_interval": 1.0}
    with postgres_server.database() as url, cluster(url, 3, join=False, settings=settings) as c:
        c.join_on_underlay()  # each agent's replica (NBD) traffic on its underlay address
        yield c


class Console:
    """A guest's serial line on a node: type into its socket, read its log file."""

    def __init__(self, agent: Agent, iid: str) -> None:
        st = config.load(agent.state_dir)
        self.sock = Path("/run/corral") / st.namespace / iid / "console.sock"
        self.log = st.instances_dir / iid / "console.log"

    def type(self, *lines: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            for line in lines:
                s.sendall(line.encode() + b"\n")
                time.sleep(0.5)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_writer(con: Console, tries: int = 4) -> None:
    """Type the writer until its first record shows: under load the tiny image's boot
    scripts may still share the serial line and swallow a typed line."""
    for _ in range(tries):
        con.type(WRITER)
        try:
            wait_for(lambda: _acked(con.text()) >= 1, 60, what="the writer's first record")
            return
        except AssertionError:
            continue
    raise AssertionError(f"the writer never started: {con.text()[-1500:]}")


def check(con: Console, tries: int = 4) -> re.Match[str]:
    """The guest's check of its records (typed again when the serial line swallowed it)."""
    for _ in range(tries):
        before = len(con.text())
        con.type(CHECK)
        try:
            found = wait_for(
                lambda b=before: re.search(r"CHECK n=(\d+) bad=(\d) mac=(\S+)", con.text()[b:]),
                60,
                what="the guest's check of its records",
            )
            return found  # type: ignore[no-any-return]
        except AssertionError:
            continue
    raise AssertionError(f"the check never ran: {con.text()[-1500:]}")


def _show(c: Cluster, name: str) -> dict[str, Any]:
    return dict(json.loads(c.cli("show", name, "--json").ok().out))


def _node_ids(c: Cluster) -> dict[str, str]:
    return {n["id"]: n["name"] for n in c.nodes()}


def _acked(text: str) -> int:
    return max((int(x) for x in re.findall(r"\bW(\d+)\b", text)), default=0)


def test_an_ha_instance_survives_its_nodes_death_with_every_acknowledged_write(
    three: Cluster,
) -> None:
    c = three
    c.cli("image", "build", "tiny", timeout=900).ok()
    c.cli(
        "run", "tiny", *WHOLE_CORE, "--name", "hav", "--ha", "--node", "host1", "--memory", "128M"
    ).ok()
    # and one in a non-default VPC's subnet: its subnet's network is made on its secondary
    vpc = re.search(r"vpc-[0-9a-f]{17}", c.cli("vpc", "create", "10.55.0.0/16").ok().out)
    assert vpc is not None
    sub = re.search(
        r"subnet-[0-9a-f]{17}", c.cli("subnet", "create", vpc.group(0), "10.55.1.0/24").ok().out
    )
    assert sub is not None
    c.cli("run", "tiny", *WHOLE_CORE, "--name", "hvpc", "--ha", "--node", "host1",
          "--memory", "128M", "--subnet", sub.group(0)).ok()  # fmt: skip
    vpc_first = _show(c, "hvpc")
    first = _show(c, "hav")
    names = _node_ids(c)
    assert names[vpc_first["node"]] == "host1" and vpc_first["ha"]
    assert names[first["node"]] == "host1" and first["ha"]
    assert names[first["secondary_node"]] in ("host2", "host3")
    secondary = names[first["secondary_node"]]
    third = ({"host2", "host3"} - {secondary}).pop()
    wait_for(lambda: _show(c, "hav")["replica_state"] == "in-sync", 300, what="the replica in sync")
    assert "in-sync" in c.cli("ls").ok().out  # the REPLICA column

    con = Console(c.agents["host1"], first["id"])
    wait_for(lambda: "login:" in con.text(), 300, what="the guest's login prompt")
    con.type("root")
    wait_for(lambda: "~ #" in con.text(), 120, what="the guest's shell")
    start_writer(con)
    try:
        wait_for(lambda: _acked(con.text()) >= 10, 240, what="the writer's records")
    except AssertionError:
        print("CONSOLE", con.text()[-1500:])
        raise

    # the secondary's link fails: the guest writes on, degraded; back, the replica resyncs
    sec_host = next(h for h in c.lan.hosts if h.name == secondary)
    assert sec_host.exec("ip", "link", "set", "eth0", "down").returncode == 0
    try:
        # degraded (the reconciler may already be resyncing, to the third node when the
        # secondary stays away longer than node_timeout)
        wait_for(
            lambda: (
                (s := _show(c, "hav"))["replica_state"] != "in-sync"
                or s["secondary_node"] != first["secondary_node"]
            ),
            120,
            what="the replica no longer in sync",
        )
        written = _acked(con.text())
        wait_for(lambda: _acked(con.text()) >= written + 5, 120, what="writes going on, degraded")
    finally:
        sec_host.exec("ip", "link", "set", "eth0", "up")
    resynced = wait_for(
        lambda: (s := _show(c, "hav"))["replica_state"] == "in-sync" and s,
        300,
        what="the replica resynced",
    )
    secondary = names[resynced["secondary_node"]]  # the same node, or the third one
    third = ({"host2", "host3"} - {secondary}).pop()
    mark = _acked(con.text())
    wait_for(lambda: _acked(con.text()) >= mark + 3, 120, what="writes after the resync")

    # host1 dies: its agent and QEMU killed, its link down
    c.agents["host1"].kill9()
    os.kill(int(first["pid"]), signal.SIGKILL)
    host1 = c.lan.hosts[0]
    assert host1.exec("ip", "link", "set", "eth0", "down").returncode == 0
    acked = _acked(con.text())
    died = time.monotonic()

    try:
        moved = wait_for(
            lambda: (
                (s := _show(c, "hav"))["node"] != first["node"] and s["state"] == "running" and s
            ),
            240,
            what="the instance running on its secondary",
        )
    except AssertionError:
        print("CONTROLLER", c.log_tail(120))
        print("SECONDARY", c.agents[secondary].log_tail(60))
        raise
    print(f"failed over {time.monotonic() - died:.1f} s after the node died; acked {acked}")
    assert names[moved["node"]] == secondary
    assert (moved["private_ip"], moved["mac"], moved["name"]) == (
        first["private_ip"],
        first["mac"],
        "hav",
    )
    scon = Console(c.agents[secondary], first["id"])
    wait_for(lambda: "login:" in scon.text(), 300, what="the guest's login on the secondary")
    scon.type("root")
    m = check(scon)
    n, bad, mac = int(m.group(1)), int(m.group(2)), m.group(3)
    print(f"acknowledged {acked}, on the secondary's disk {n}")
    assert bad == 0, scon.text()[-2000:]
    assert n >= acked >= 10
    assert mac == first["mac"]

    # the VPC instance too: running on its secondary, on its subnet's network there, from its
    # replica (its guest boots to the login prompt), with its address
    vpc_moved = wait_for(
        lambda: (s := _show(c, "hvpc"))["node"] != first["node"] and s["state"] == "running" and s,
        240,
        what="the VPC instance running on its secondary",
    )
    assert vpc_moved["private_ip"] == vpc_first["private_ip"]
    assert vpc_moved["private_ip"].startswith("10.55.1.")
    vcon = Console(c.agents[names[vpc_moved["node"]]], vpc_moved["id"])
    wait_for(lambda: "login:" in vcon.text(), 300, what="the VPC guest's login on its secondary")

    # replicated again, to the node that is left
    again = wait_for(
        lambda: (s := _show(c, "hav"))["replica_state"] == "in-sync" and s,
        300,
        what="the new replica in sync",
    )
    assert names[again["secondary_node"]] == third
    assert "instance-failover" in c.cli("op", "ls", "--target", first["id"]).ok().out
