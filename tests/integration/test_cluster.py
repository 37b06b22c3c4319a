"""Three nodes on one machine (tests/cluster.py): each host namespace runs its own agent joined
with `corral node join` (mutual TLS), the controller on PostgreSQL serves HTTPS on the LAN.
One cluster is shared by the module; three tiny VMs boot in all.

Shown: joins refused for bad, expired and reused tokens; nodes ready with their capacity;
labels and cordons; an image pulled to a node on first use (checked by sha256 there); pinning
with --node; a spread placement group honoured, and refused with the reason when it cannot be;
console log of an instance on a remote node, and an SSH login to it with the key from that
node's metadata service (the agent answers from documents the controller pushed) through the
API's streams; `kill -9` of an agent: the node turns unreachable, its VM runs on, and is
re-adopted when the agent is back; `kill -9` of the controller: nothing lost, the VMs run on
with the same pids, the nodes reconnect, launches work; a live migration between two joined
nodes (`corral rebalance` evening out a crowded node); a cut-off node fences its HA instance
before it is declared dead, a hung agent's guard does, a killed controller fences nothing."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.node import fence
from tests.cluster import AGENT_PORT, Cluster, cluster
from tests.harness import WHOLE_CORE, cmdline, wait_for
from tests.postgres import PostgresServer

NODE_TIMEOUT = 6  # seconds: the controller's node_timeout here (so unreachable comes quickly)


@pytest.fixture(scope="module")
def three(postgres_server: PostgresServer) -> Iterator[Cluster]:
    with (
        postgres_server.database() as url,
        cluster(url, 3, settings={"node_timeout": NODE_TIMEOUT}) as c,
    ):
        yield c


def _join_again(c: Cluster, token: str) -> tuple[int, str]:
    """`corral node join` from host1's namespace with a scratch state dir (refused before it
    serves anything)."""
    host = c.lan.hosts[0]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        r = host.exec(
            sys.executable, "-m", "corral", "--state-dir", d, "node", "join", c.url,
            "--token", token, "--listen", f"{host.address}:{AGENT_PORT + 1}", "--name", "extra",
            timeout=120,
        )  # fmt: skip
        assert not (Path(d) / "node.json").exists()
    return r.returncode, r.stdout + r.stderr


def test_joins_with_bad_expired_or_reused_tokens_are_refused(three: Cluster) -> None:
    rc, out = _join_again(three, three.agents["host1"].token)
    assert rc != 0 and "already used" in out and "corral node token" in out
    expiring = three.token("1s")
    time.sleep(2)
    rc, out = _join_again(three, expiring)
    assert rc != 0 and "expired" in out and "corral node token" in out
    fingerprint = expiring.split(".")[2]
    rc, out = _join_again(three, f"K1.notissued.{fingerprint}")
    assert rc != 0 and "never issued" in out
    rc, out = _join_again(three, f"K1.x.{'0' * 64}")
    assert rc != 0 and "not the one that made this token" in out
    assert sorted(n["name"] for n in three.nodes()) == ["host1", "host2", "host3"]


def test_nodes_report_capacity_and_take_labels_and_cordons(three: Cluster) -> None:
    nodes = {n["name"]: n for n in three.nodes()}
    for i, name in enumerate(("host1", "host2", "host3")):
        n = nodes[name]
        assert n["state"] == "ready", n
        assert n["address"] == f"https://192.0.2.{11 + i}:{AGENT_PORT}"
        assert n["cpus"] > 0 and n["memory"] > 0 and n["memory_free"] > 0
        assert n["accel"] == "tcg" and n["qemu_version"] and n["last_seen"]
    three.cli("node", "label", "host3", "disk=ssd").ok()
    assert three.node("host3")["labels"] == {"disk": "ssd"}
    three.cli("node", "label", "host3", "disk-").ok()
    assert three.node("host3")["labels"] == {}
    three.cli("node", "cordon", "host3").ok()
    assert three.node("host3")["state"] == "cordoned"
    three.cli("node", "uncordon", "host3").ok()
    assert three.node("host3")["state"] == "ready"


def _login(c: Cluster, name: str) -> None:
    """`corral ssh NAME -- CMD` logs in with the key the guest got from its node's metadata
    service (through the API's port stream to that node) and runs a command there."""
    r = c.ssh(name, "hostname; wget -qO- http://169.254.169.254/latest/meta-data/instance-id")
    if r.rc != 0:
        agents = "\n".join(f"{a.name}: {a.log_tail(15)}" for a in c.agents.values())
        raise AssertionError(f"ssh {name}: {r}\n{c.log_tail(20)}\n{agents}")
    host, iid = r.out.split()
    assert host == name and iid == _show(c, name)["id"], r.out


def _show(c: Cluster, name: str) -> dict[str, object]:
    return dict(json.loads(c.cli("show", name, "--json").ok().out))


def test_instances_on_remote_nodes(three: Cluster) -> None:
    c = three
    c.cli("image", "build", "tiny", timeout=900).ok()
    c.cli("placement-group", "create", "apart", "--strategy", "spread").ok()
    # pinned: on host2, the image pulled there on first use (and checked by sha256 there)
    c.cli(
        "run", "tiny", *WHOLE_CORE, "--name", "a", "--memory", "192M", "--node", "host2",
        "--placement-group", "apart", timeout=900,
    ).ok()  # fmt: skip
    a = _show(c, "a")
    assert a["state"] == "running" and a["node"] in ("host2", "node-host2"), a
    host2 = c.agents["host2"]
    pulled = list((host2.state_dir / "images" / "manifests").glob("*.json"))
    assert pulled, "the image did not reach host2's own store"
    assert not list((c.agents["host1"].state_dir / "images" / "manifests").glob("*.json"))

    # spread: the second member goes elsewhere; a third with the others cordoned cannot
    c.cli(
        "run", "tiny", *WHOLE_CORE, "--name", "b", "--memory", "192M", "--placement-group", "apart",
        timeout=900,
    ).ok()  # fmt: skip
    b = _show(c, "b")
    assert b["state"] == "running" and b["node"] not in (a["node"],), (a, b)
    free = next(n for n in ("host1", "host3") if n not in str(b["node"]))
    c.cli("node", "cordon", free).ok()
    try:
        run = ("run", "tiny", *WHOLE_CORE, "--name", "c", "--memory", "192M")
        r = c.cli(*run, "--placement-group", "apart")
        assert r.rc != 0
        assert "spread" in (r.out + r.err) and "cordoned" in (r.out + r.err), r
    finally:
        c.cli("node", "uncordon", free).ok()

    # the console, and an SSH login with the CLI's key through the API's streams to the remote
    # node: the guest took its name and key from host2's metadata service, which answers from
    # the documents the controller pushed (node/imds.py)
    wait_for(
        lambda: "corral-tiny: a ready" in c.cli("logs", "a").ok().out,
        300,
        what="a's console to say it is ready, named by its metadata",
    )
    _login(c, "a")

    # kill -9 of host2's agent: unreachable, the VM runs on; back: re-adopted
    pid = int(str(a["pid"]))
    assert b"qemu" in cmdline(pid)
    host2.kill9()
    wait_for(lambda: c.node("host2").get("state") == "unreachable", 120, what="host2 unreachable")
    assert b"qemu" in cmdline(pid), "the VM died with its agent"
    refused = c.cli("node", "rm", "host2")  # it still has an instance
    assert refused.rc != 0 and "still has 1 instance" in refused.out + refused.err
    # no agent answers there, and its peers get refusals: dead; the non-HA VM is node-lost
    # (issue 16) but runs on, to be adopted when an agent is back
    wait_for(
        lambda: str(_show(c, "a").get("state_reason", "")).startswith("node-lost"),
        60,
        what="a node-lost",
    )
    assert _show(c, "a")["state"] == "stopped" and b"qemu" in cmdline(pid)
    host2.restart()
    wait_for(lambda: c.node("host2").get("state") == "ready", 180, what="host2 ready again")
    assert b"qemu" in cmdline(pid)
    wait_for(lambda: _show(c, "a")["state"] == "running", 60, what="a running")
    assert _show(c, "a")["pid"] == pid  # the same QEMU, adopted, not a new one
    _login(c, "a")


# the tests below use a and b from test_instances_on_remote_nodes (the module's order)
def _node_of(inst: dict[str, object]) -> str:
    return str(inst["node"]).removeprefix("node-")


def test_a_controller_killed_with_9_loses_nothing(three: Cluster) -> None:
    """`kill -9` of the controller while a and b run on remote nodes, then a restart on the
    same state and database: the same instances on the same nodes with the same QEMU pids (the
    VMs never stopped), every node reconnected and heartbeating, and a new launch works."""
    c = three
    before = {n: _show(c, n) for n in ("a", "b")}
    pids = {n: int(str(v["pid"])) for n, v in before.items()}
    seen = {n["name"]: n["last_seen"] for n in c.nodes()}
    c.kill9()
    time.sleep(3)  # away for a while: the agents go on alone
    for pid in pids.values():
        assert b"qemu" in cmdline(pid), "a VM died with the controller"
    c.start()
    wait_for(
        lambda: (
            all(n["state"] == "ready" and n["last_seen"] != seen.get(n["name"]) for n in c.nodes())
            and len(c.nodes()) == 3
        ),
        120,
        what="every node ready and heartbeating to the new controller",
    )
    ls = json.loads(c.cli("ls", "--json").ok().out)
    assert sorted(i["name"] for i in ls) == ["a", "b"], ls  # none lost, none duplicated
    for name, old in before.items():
        now = _show(c, name)
        assert now["state"] == "running" and now["pid"] == pids[name], (old, now)
        assert (now["node"], now["private_ip"], now["mac"]) == (
            old["node"],
            old["private_ip"],
            old["mac"],
        )
        assert b"qemu" in cmdline(pids[name])
    c.cli("run", "tiny", *WHOLE_CORE, "--name", "c", "--memory", "128M", timeout=600).ok()
    assert _show(c, "c")["state"] == "running"
    c.cli("rm", "c", timeout=300).ok()


def test_live_migration_between_joined_nodes(three: Cluster) -> None:
    """`corral rebalance` evens out a crowded node by a live migration between two joined
    agents over the underlay (the same migration `corral migrate --to` requests): the image is
    pulled to the destination, the disk mirrored (a file synced before the move reads back from
    the destination's disk with the page cache dropped), and the guest runs there with the same
    name, MAC and private address, reached by SSH through the new node, with its metadata
    served by the new node; its QEMU is gone from the source. Then `corral node drain` of the
    source moves the instance left there live to another node, same address and MAC.

    First, a runs in the QEMU that host2's restarted agent adopted (the test before): a live
    migration out of an adopted QEMU is refused (docs/SPEC.md: such migrations corrupted
    guests) when asked for, the node having told the controller, saying what to do (nothing
    started, so nothing to roll back); stopped and started, a gets a launched QEMU."""
    c = three
    r = c.cli("migrate", "a", "--timeout", "300", timeout=600)
    said = r.out + r.err
    assert r.rc != 0 and "took over after a restart" in said and "stop and start it" in said, r
    assert "rolled back" not in said, r
    assert _show(c, "a")["state"] == "running"
    c.cli("stop", "a", timeout=300).ok()
    c.cli("start", "a", timeout=600).ok()
    a, b = _show(c, "a"), _show(c, "b")
    src = _node_of(a)
    dst = next(h for h in ("host1", "host2", "host3") if h not in (src, _node_of(b)))
    c.ssh("a", "echo moved-with-me > /root/mark && sync").ok()
    # a crowded node: d beside a (not in a's spread group), dst empty; the plan moves one of
    # the two there (a: equal moves are broken by name), and nothing else would even it out
    c.cli(
        "run", "tiny", *WHOLE_CORE, "--name", "d", "--memory", "192M", "--node", src, timeout=600
    ).ok()
    plan = json.loads(c.cli("rebalance", "--dry-run", "--json").ok().out)
    moves = [(m["instance"], m["source"], m["target"]) for m in plan["moves"]]
    assert [(i, s.removeprefix("node-"), t.removeprefix("node-")) for i, s, t in moves] == [
        ("a", src, dst)
    ], plan
    assert plan["score_after"] < plan["score_before"] and plan["operation"] is None
    d = _show(c, "d")
    out = c.cli("rebalance", "--timeout", "300", timeout=600).ok().out
    assert "moved: a" in out, out
    moved = _show(c, "a")
    assert _node_of(moved) == dst and moved["state"] == "running", moved
    assert (moved["private_ip"], moved["mac"]) == (a["private_ip"], a["mac"])
    assert moved["pid"] != a["pid"] and b"qemu" in cmdline(int(str(moved["pid"])))
    assert not (c.agents[src].state_dir / "instances" / str(a["id"])).exists()
    assert list((c.agents[dst].state_dir / "images" / "manifests").glob("*.json"))
    r = c.ssh("a", "echo 3 > /proc/sys/vm/drop_caches; cat /root/mark").ok()
    assert r.out.strip() == "moved-with-me"
    _login(c, "a")  # the same name, and the instance id from dst's metadata service
    assert _node_of(_show(c, "d")) == src  # the other one stayed
    # `corral node drain`: the node cordoned, d (alone there now) moves live to another node
    out = c.cli("node", "drain", src, "--timeout", "300", timeout=600).ok().out
    assert "d: now on" in out and "stays" not in out, out
    drained = _show(c, "d")
    assert _node_of(drained) != src and drained["state"] == "running", drained
    assert (drained["private_ip"], drained["mac"]) == (d["private_ip"], d["mac"])
    assert c.node(src).get("cordoned")
    c.cli("node", "uncordon", src).ok()
    c.cli("rm", "a", "d", timeout=300).ok()  # b moves cold next


def test_evacuate_moves_a_stopped_instance_cold_with_its_data(three: Cluster) -> None:
    """`corral node evacuate` (b from test_instances_on_remote_nodes, alone on its node): a
    file synced in the guest, the guest stopped, its node evacuated: the root overlay is copied
    to the node the scheduler picks over the underlay (NBD from the destination's
    qemu-storage-daemon, checked by qemu-img compare), the record moves, nothing of it is left
    on the source; started again it runs there with the same name, MAC and address, reached by
    SSH through the new node, and the file reads back with the page cache dropped."""
    c = three
    b = _show(c, "b")
    src = _node_of(b)
    try:
        c.ssh("b", "echo cold-with-me > /root/mark && sync").ok()
        c.cli("stop", "b", "--force", timeout=300).ok()
        plan = json.loads(c.cli("node", "evacuate", src, "--dry-run", "--json").ok().out)
        assert [m["instance"] for m in plan["moves"]] == ["b"] and not plan["not_moved"], plan
        assert not c.node(src).get("cordoned"), "a dry run cordoned the node"
        res = json.loads(c.cli("node", "evacuate", src, "--json", timeout=600).ok().out)
        assert res["cordoned"] and [m["instance"] for m in res["moves"]] == ["b"], res
        moved = _show(c, "b")
        dst = _node_of(moved)
        assert dst != src and dst == res["moves"][0]["to"].removeprefix("node-"), (res, moved)
        assert moved["state"] == "stopped", moved
        assert (moved["private_ip"], moved["mac"]) == (b["private_ip"], b["mac"])
        for host in (src, dst):
            assert not list((c.agents[host].state_dir / "arriving").glob("*")), host
        assert not (c.agents[src].state_dir / "instances" / str(b["id"])).exists()
        assert (c.agents[dst].state_dir / "instances" / str(b["id"])).exists()
        c.cli("start", "b", timeout=600).ok()
        now = _show(c, "b")
        assert now["state"] == "running" and _node_of(now) == dst, now
        r = c.ssh("b", "echo 3 > /proc/sys/vm/drop_caches; cat /root/mark").ok()
        assert r.out.strip() == "cold-with-me"
        assert not (c.agents[src].state_dir / "instances" / str(b["id"])).exists()
    finally:
        c.cli("node", "uncordon", src)
        c.cli("rm", "b", timeout=300)


# -- failure detection and fencing (issue 16; docs/operator-guide.md) ------------------------
def _db(c: Cluster, sql: str, **params: object) -> None:
    """A change only the HA branch's API makes (the HA flag) or a failover would make, written
    to the controller's database directly."""
    from sqlalchemy import create_engine, text

    engine = create_engine(c.db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def _qemu_of(iid: str) -> list[int]:
    """Pids of the QEMUs of instance ``iid`` on this machine (any node)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            line = cmdline(entry.name)
            if b"qemu-system" in line and iid.encode() in line:
                out.append(int(entry.name))
    return out


def _declared_dead(c: Cluster, node: str) -> int:
    """How often the controller's log says it declared ``node`` dead."""
    return c.log_tail(100_000).count(f"node node-{node} declared dead")


def _logged_at(text: str, what: str) -> float:
    """When a log line (asctime format) containing ``what`` was written (the last such)."""
    import datetime as dt

    line = [x for x in text.splitlines() if what in x][-1]
    stamp = " ".join(line.split()[:2])
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_cut_off_node_fences_its_ha_instance_before_it_is_declared_dead(three: Cluster) -> None:
    """A partition of host3: its agent kills its HA QEMU (the lease lapsed, no peer answers)
    before the controller's view of the lease expires; then the controller declares it dead
    and marks its non-HA instance node-lost (it runs on). That instance is then recorded on
    another node one generation on: when the link is back, host3's copy is killed, never
    adopted. The HA one has no replica (the other nodes are cordoned), so it is not moved and
    starts again on host3. Then kill -STOP of the agent: its guard kills the HA QEMU, and the
    controller declares the node dead (a hung agent says no hellos to its peers; its listening
    socket still takes TCP connections, which used to count as reaching it, so it was never
    declared dead); resumed, it comes back. Last, kill -9 of the controller: the HA instance
    runs on, nothing fences."""
    c = three
    c.cli("image", "build", "tiny", timeout=900).ok()
    for name in ("h", "p"):
        c.cli(
            "run", "tiny", "--name", name, "--memory", "128M", "--node", "host3", timeout=600
        ).ok()  # two guests on one node: the default half core each leaves the node room
    h_id = str(_show(c, "h")["id"])
    # h is HA-flagged with no replica: the other nodes are cordoned, so the replica manager
    # finds no secondary and never fails it over; this test is about fencing (test_ha.py
    # shows the failover to a replica)
    for other in ("host1", "host2"):
        c.cli("node", "cordon", other).ok()
    _db(c, "UPDATE instances SET ha = true WHERE id = :i", i=h_id)
    c.cli("stop", "h", "--force").ok()
    c.cli("start", "h", timeout=600).ok()  # its spec on host3 says ha now
    spec = json.loads((c.agents["host3"].state_dir / "instances" / h_id / "spec.json").read_text())
    assert spec["ha"] is True and spec["generation"] == 1
    h_pid, p_pid = int(str(_show(c, "h")["pid"])), int(str(_show(c, "p")["pid"]))
    host3 = c.agents["host3"]
    lease = host3.state_dir / "fence" / "lease.json"
    wait_for(lambda: lease.exists() and json.loads(lease.read_text())["deadline"], 30, what="lease")

    # the partition
    host3.host.exec("ip", "link", "set", "eth0", "down").check_returncode()
    try:
        wait_for(lambda: not cmdline(h_pid), 60, what="host3's fence to kill h's QEMU")
        assert not _declared_dead(c, "host3"), "declared dead before the node had fenced"
        assert "killing HA instance" in host3.log_tail(60)
        wait_for(lambda: _declared_dead(c, "host3"), 60, what="host3 declared dead")
        # the node fenced before the controller's view of its lease expired (both logs are
        # stamped by this machine's clock)
        fenced = _logged_at(host3.log_tail(400), "killing HA instance")
        expired = _logged_at(c.log_tail(100_000), "node node-host3: its lease expired")
        assert fenced < expired, (fenced, expired)
        shown = _show(c, "p")
        assert shown["state"] == "stopped", shown
        assert str(shown["state_reason"]).startswith("node-lost"), shown
        assert cmdline(p_pid), "the non-HA instance died with the partition"
        assert not _qemu_of(h_id)
        # p is recorded elsewhere now, one generation on (as a failover records it):
        # host3's copy is stale
        _db(
            c,
            "UPDATE instances SET node_id = 'node-host2', generation = generation + 1, "
            "desired_state = 'stopped' WHERE id = :i",
            i=str(shown["id"]),
        )
    finally:
        host3.host.exec("ip", "link", "set", "eth0", "up").check_returncode()
    wait_for(lambda: c.node("host3").get("state") == "ready", 60, what="host3 back")
    # the returning node's stale copy is killed, never adopted
    wait_for(lambda: not cmdline(p_pid), 60, what="the stale copy of p killed on host3")
    assert "runs a stale copy of p (generation 1; the instance is generation 2" in c.log_tail(2000)
    assert not _qemu_of(str(shown["id"]))
    # h's row still says running (nothing was known of host3 meanwhile): the reconciler finds
    # its QEMU gone and starts it again there
    wait_for(lambda: _qemu_of(h_id), 120, what="h started again on host3")
    wait_for(lambda: [_show(c, "h")["pid"]] == _qemu_of(h_id), 60, what="h's new pid recorded")
    h_pid = _qemu_of(h_id)[0]

    # the agent hangs (kill -STOP): its guard kills the HA QEMU; it says no hellos, so once
    # its guard must have fired the controller declares it dead
    assert host3.proc is not None
    deaths = _declared_dead(c, "host3")
    os.kill(host3.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not cmdline(h_pid), 60, what="host3's guard to kill h's QEMU")
        wait_for(lambda: _declared_dead(c, "host3") > deaths, 60, what="host3 declared dead")
        assert c.node("host3").get("lease") == "dead"
    finally:
        os.kill(host3.proc.pid, signal.SIGCONT)
    wait_for(lambda: c.node("host3").get("state") == "ready", 60, what="host3 back")
    guard_log = host3.state_dir / "fence" / "guard.log"
    assert "deadline passed without the agent" in guard_log.read_text()

    # the controller down (kill -9; the last check of the module: the teardown cleans up):
    # the HA instance runs on, nothing fences (the peers answer host3's probes)
    c.cli("rm", "p", timeout=300).ok()
    wait_for(lambda: _show(c, "h")["state"] == "running" and _qemu_of(h_id), 120, what="h again")
    h_pid = int(str(_show(c, "h")["pid"]))
    kills = guard_log.read_text().count("deadline passed")
    fences = host3.log_tail(100_000).count("killing HA instance")
    c.kill9()
    deadline = float(json.loads(lease.read_text())["deadline"])
    wait_for(  # the lease lapsed on host3 long enough for its guard and its fence to act
        lambda: time.monotonic() > deadline + fence.PROBE_SLACK + fence.HANG_AFTER + 2,
        60,
        what="host3's lease to lapse",
    )
    assert cmdline(h_pid), "the HA instance was fenced while only the controller was down"
    assert guard_log.read_text().count("deadline passed") == kills
    assert host3.log_tail(100_000).count("killing HA instance") == fences
