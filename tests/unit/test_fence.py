"""Failure detection and fencing (issue 16), without root or QEMU: the node's lease as the
agent counts it, its fencing decision (peers probed), the guard killing a real process when its
deadline passes, generation numbers refused when stale, and the controller's side: leases,
unreachable, dead past the margin (non-HA instances node-lost, HA ones handed to the replica
seam), a node a peer still reaches not declared dead, stale copies on a returning node killed.
The same behaviours with real agents, QEMU and a cut link: tests/integration/test_fence.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from corral.controller.service import Controller
from corral.errors import EnvironmentProblem, WrongState
from corral.node import fence, guard
from corral.node.fake import FakeNode
from corral.node.spec import HEARD_WITHIN, InstanceSpec
from corral.store import Store
from corral.store.models import Instance, Node, Operation


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fence(tmp_path: Path, ha: dict[str, int], reachable: bool) -> tuple[fence.Fence, list[str]]:
    killed: list[str] = []
    clock = Clock()

    def kill(iid: str) -> None:
        killed.append(iid)
        ha.pop(iid, None)

    async def probe(address: str) -> bool:
        return reachable

    f = fence.Fence(tmp_path, lambda: dict(ha), kill, probe=probe, clock=clock)
    return f, killed


# -- the lease as the node counts it ---------------------------------------------------------
def test_the_lease_runs_from_when_the_recorded_heartbeat_arrived_not_the_latest() -> None:
    lease = fence.Lease()
    lease.heard("s1", 1, 0, 4.0, now=10.0)
    assert lease.deadline is None  # nothing recorded yet: no lease to count on
    lease.heard("s1", 2, 1, 4.0, now=11.0)
    assert lease.deadline == 14.0  # heartbeat 1 reached us at 10: recorded, so 10 + 4
    lease.heard("s1", 3, 1, 4.0, now=12.5)  # the database did not record 2: no extension
    assert lease.deadline == 14.0
    assert not lease.lapsed(13.9) and lease.lapsed(14.0)
    # a restarted controller numbers afresh: its heartbeat 1 is not the old session's
    lease.heard("s2", 1, 0, 4.0, now=13.0)
    lease.heard("s2", 2, 1, 4.0, now=14.0)
    assert lease.deadline == 17.0
    # two controllers renewing at once (one taking over): neither loses the other's count
    lease.heard("s1", 4, 3, 4.0, now=14.5)
    assert lease.deadline == 17.0  # s1's 3 arrived at 12.5: 16.5 < 17
    lease.heard("s2", 3, 2, 4.0, now=15.0)
    lease.heard("s1", 5, 4, 4.0, now=15.5)
    assert lease.deadline == 18.5  # s1's 4 arrived at 14.5


async def test_a_cut_off_node_kills_its_ha_instances_and_only_those(tmp_path: Path) -> None:
    ha = {"i-ha": os.getpid()}
    f, killed = _fence(tmp_path, ha, reachable=False)
    f.heartbeat("s", 1, 0, 4.0, ["192.0.2.12:8774"])
    f.heartbeat("s", 2, 1, 4.0, ["192.0.2.12:8774"])
    await f.check_once()
    assert killed == [] and f.valid()
    guard_file = json.loads(f.guard_file.read_text())
    assert guard_file["deadline"] == 104.0 + fence.PROBE_SLACK
    assert guard_file["pids"][0][0] == os.getpid()  # with its start time, against reuse
    f.clock.now = 104.5  # type: ignore[attr-defined]
    await f.check_once()
    assert killed == ["i-ha"] and f.isolated and not f.valid()


async def test_a_lapsed_lease_with_peers_answering_is_the_controller_down_nothing_fences(
    tmp_path: Path,
) -> None:
    ha = {"i-ha": os.getpid()}
    f, killed = _fence(tmp_path, ha, reachable=True)
    f.heartbeat("s", 1, 0, 4.0, ["192.0.2.12:8774"])
    f.heartbeat("s", 2, 1, 4.0, ["192.0.2.12:8774"])
    f.clock.now = 130.0  # type: ignore[attr-defined]
    await f.check_once()
    assert killed == [] and not f.isolated
    # the guard's deadline moves with the agent's decisions: it fires only if the agent hangs
    assert json.loads(f.guard_file.read_text())["deadline"] == 130.0 + fence.HANG_AFTER


async def test_a_node_without_peers_never_fences(tmp_path: Path) -> None:
    ha = {"i-ha": os.getpid()}
    f, killed = _fence(tmp_path, ha, reachable=False)
    f.heartbeat("s", 1, 0, 4.0, [])
    f.heartbeat("s", 2, 1, 4.0, [])
    f.clock.now = 200.0  # type: ignore[attr-defined]
    await f.check_once()
    assert killed == [] and json.loads(f.guard_file.read_text())["deadline"] is None


def test_a_restarted_agent_keeps_its_predecessors_deadline(tmp_path: Path) -> None:
    f, _ = _fence(tmp_path, {}, reachable=False)
    f.heartbeat("s", 1, 0, 4.0, ["192.0.2.12:8774"])
    f.heartbeat("s", 2, 1, 4.0, ["192.0.2.12:8774"])
    again, _ = _fence(tmp_path, {}, reachable=False)
    assert again.lease.deadline == 104.0 and again.lease.peers == ["192.0.2.12:8774"]


async def _liveness(tmp_path: Path, peers: list[str]) -> tuple[fence.Fence, str]:
    """A fence answering hellos on a free loopback port pair; its lease lists ``peers``."""
    for _ in range(20):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        f, _ = _fence(tmp_path, {}, reachable=False)
        f.heartbeat("s", 1, 0, 4.0, peers)
        try:
            await f.listen(f"127.0.0.1:{port}")
        except EnvironmentProblem:
            continue  # port + 1 taken: another pair
        return f, f"127.0.0.1:{port}"
    raise AssertionError("no free port pair")


async def test_a_hello_counts_only_when_the_peers_own_loop_answers_and_records_it(
    tmp_path: Path,
) -> None:
    me = "127.0.0.9:8774"
    peer, at = await _liveness(tmp_path, [me])
    try:
        assert await fence.hello(at, me)
        ago = peer.heard_ago(me)
        assert ago is not None and ago < 1.0
        # a name the peer's lease does not list (not the controller's name for us) is no
        # answer, and nothing is recorded for it
        assert not await fence.hello(at, "127.0.0.8:8774")
        assert peer.heard_ago("127.0.0.8:8774") is None
    finally:
        await peer.close()
    assert not await fence.hello(at, me)  # refused: the host is up, its agent is not


async def test_a_taken_liveness_port_is_named_with_the_fix(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    f, _ = _fence(tmp_path, {}, reachable=False)
    try:
        with pytest.raises(EnvironmentProblem) as err:
            await f.listen(f"127.0.0.1:{port - 1}")
        assert f"127.0.0.1:{port}" in err.value.message and "--listen" in err.value.message
    finally:
        taken.close()
        await f.close()


async def test_a_hung_agent_accepting_connections_is_no_answer(tmp_path: Path) -> None:
    """The kernel completes the handshake for a listening socket nobody serves (an agent
    stopped by SIGSTOP): that used to count as reaching it."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    port = hung.getsockname()[1]
    try:
        started = time.monotonic()
        assert not await fence.hello(f"127.0.0.1:{port - 1}", "127.0.0.9:8774", timeout=0.3)
        assert time.monotonic() - started < 5
    finally:
        hung.close()


def test_the_guard_kills_listed_processes_once_the_deadline_passes(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        st = fence.start_time(victim.pid)
        assert st is not None
        data = {
            "agent": os.getpid(),
            "deadline": time.monotonic() + 0.5,
            # a pid whose start time differs is another process by now: left alone
            "pids": [[victim.pid, st], [bystander.pid, st - 1000]],
        }
        (tmp_path / "guard.json").write_text(json.dumps(data))
        g = subprocess.Popen([sys.executable, "-m", "corral.node.guard", str(tmp_path)])
        try:
            assert victim.wait(20) == -signal.SIGKILL
            assert bystander.poll() is None
        finally:
            g.send_signal(signal.SIGTERM)
            assert g.wait(10) == 0
    finally:
        for p in (victim, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_guard_leaves_processes_alone_before_the_deadline_or_without_one() -> None:
    assert guard.kill_due({"deadline": None, "pids": [[1, 0.0]]}, time.monotonic()) == []
    assert guard.kill_due({"deadline": time.monotonic() + 60, "pids": [[1, 0.0]]}, 0.0) == []


def test_the_guard_ends_when_its_agent_is_gone_and_nothing_is_left(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "guard.json").write_text(json.dumps({"agent": gone.pid, "deadline": None}))
    g = subprocess.Popen([sys.executable, "-m", "corral.node.guard", str(tmp_path)])
    assert g.wait(20) == 0


# -- generations -------------------------------------------------------------------------------
def test_a_stale_generation_is_refused_with_the_reason() -> None:
    fence.check_generation("i-1", held=3, asked=3)
    fence.check_generation("i-1", held=0, asked=1)  # nothing held yet
    fence.check_generation("i-1", held=3, asked=0)  # an unversioned caller: not checked
    with pytest.raises(WrongState) as err:
        fence.check_generation("i-1", held=3, asked=2)
    assert err.value.reason == "stale-generation"
    assert "generation 2" in err.value.message and "generation 3" in err.value.message


async def _run(api: httpx.AsyncClient, ctrl: Controller, name: str) -> str:
    r = await api.post("/v1/instances", json={"image": "tiny", "name": name, "memory": "128M"})
    assert r.status_code == 202, r.text
    iid = str(r.json()["instance"]["id"])
    for _ in range(200):
        if (await api.get(f"/v1/instances/{iid}")).json()["state"] == "running":
            return iid
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not run")


async def test_specs_carry_the_generation_and_a_node_refuses_an_older_one(
    api: httpx.AsyncClient, ctrl: Controller, node: FakeNode
) -> None:
    iid = await _run(api, ctrl, "gen")
    assert node.specs[iid].generation == 1 and node.specs[iid].ha is False
    async with ctrl.store.write() as s:
        row = await s.get(Instance, iid)
        assert row is not None
        from corral.controller.failover import bump_generation

        assert bump_generation(row) == 2
    async with ctrl.store.read() as s:
        row = await s.get(Instance, iid)
        assert row is not None
        spec = await ctrl.instances.spec(s, row)
    await ctrl.node("node-n1").instance_start(spec)
    stale = spec.model_copy(update={"generation": 1})
    with pytest.raises(WrongState) as err:  # through the wire: code and reason cross
        await ctrl.node("node-n1").instance_start(stale)
    assert err.value.reason == "stale-generation"


def test_the_instance_spec_has_the_ha_flag_and_the_generation() -> None:
    fields = InstanceSpec.model_fields
    assert fields["ha"].default is False and fields["generation"].default == 0


# -- the controller's side ---------------------------------------------------------------------
class Silent:
    async def heartbeat(self, *args: object) -> str:
        from corral.errors import EnvironmentProblem

        raise EnvironmentProblem("node is unreachable", reason="node-unreachable")

    async def peer_heard(self, addresses: list[str]) -> list[float | None]:
        raise AssertionError("a silent node is not asked")

    async def instances(self) -> list[object]:
        raise AssertionError("a silent node is not reconciled")


class Recorder:
    """Stands in for the replica manager's failover (tests/unit/test_ha.py shows the real one)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def fail_over_node(self, node_id: str) -> None:
        self.asked.append(node_id)


class Hanging(Silent):
    """A node whose agent accepts the connection and never answers (hung, or a cut link)."""

    def __init__(self) -> None:
        self.calls = 0

    async def heartbeat(self, *args: object) -> str:
        self.calls += 1
        await asyncio.sleep(3600)
        return "never"


async def test_a_node_that_stops_answering_holds_up_no_other_nodes_heartbeat(
    ctrl: Controller, node: FakeNode
) -> None:
    """Its first missed ping costs one ping timeout; after that it is pinged on the side, and
    the pass (every other node's lease renewal) does not wait for it."""
    await _joined(ctrl)
    hung = Hanging()
    ctrl.nodes["node-hung"] = hung  # type: ignore[assignment]
    try:
        await ctrl.cluster.heartbeat_once()  # waits out the ping timeout once
        await ctrl.cluster.heartbeat_once()  # the side ping starts and is not waited for
        side = ctrl.cluster._quiet["node-hung"]
        assert side is not None and not side.done()  # the pass returned while it hangs
        calls = hung.calls
        await ctrl.cluster.heartbeat_once()  # still pending: not pinged again
        assert hung.calls == calls and ctrl.cluster._quiet["node-hung"] is side
    finally:
        del ctrl.nodes["node-hung"]
        await ctrl.cluster.heartbeat_once()  # a node gone: its side ping is cancelled
        assert "node-hung" not in ctrl.cluster._quiet


async def test_heartbeats_confirm_what_the_database_recorded(
    ctrl: Controller, node: FakeNode
) -> None:
    async with ctrl.store.write() as s:  # a joined node (TLS address): it gets lease terms
        await s.execute(
            update(Node).where(Node.id == "node-n1").values(address="https://192.0.2.11:8774")
        )
    node.heartbeats.clear()
    await ctrl.cluster.heartbeat_once()
    await ctrl.cluster.heartbeat_once()
    await ctrl.cluster.heartbeat_once()
    mine = [h for h in node.heartbeats if h[0] == ctrl.cluster.session][-3:]
    # each heartbeat confirms the previous one (recorded in between)
    assert [h[2] for h in mine[1:]] == [mine[0][1], mine[1][1]]
    from corral.controller.cluster import fence_after

    assert mine[-1][3] == fence_after(ctrl.settings) == ctrl.settings.lease_timeout - 1.0
    assert mine[-1][4] == []  # no other joined node: no peers


@pytest.mark.postgres
async def test_one_controller_holds_the_lock_and_each_holder_gets_a_new_epoch(
    store: Store,
) -> None:
    from corral.controller.cluster import db_now
    from corral.controller.leader import ControllerLock

    async with store.read() as s:
        now = await db_now(s, store.dialect)
    first, second = ControllerLock(store, "c1"), ControllerLock(store, "c2")
    try:
        assert await first.ensure(now) and first.held
        if store.is_sqlite:  # the database's only user: always held
            return
        assert not await second.ensure(now) and not second.held
        assert await first.ensure(now)  # still held
        await first.close()  # its connection goes, the lock with it
        assert await second.ensure(now) and second.epoch == first.epoch + 1
    finally:
        await first.close()
        await second.close()


async def _joined(ctrl: Controller, node_id: str = "node-n1", n: int = 11) -> None:
    """Make the fake node look joined (a TLS address): leases and fencing apply to it."""
    async with ctrl.store.write() as s:
        await s.execute(
            update(Node).where(Node.id == node_id).values(address=f"https://192.0.2.{n}:8774")
        )


async def test_a_dead_node_loses_its_non_ha_instances_and_hands_over_its_ha_ones(
    api: httpx.AsyncClient, ctrl: Controller, node: FakeNode
) -> None:
    await _joined(ctrl)
    plain = await _run(api, ctrl, "plain")
    ha = await _run(api, ctrl, "ha")
    async with ctrl.store.write() as s:
        await s.execute(update(Instance).where(Instance.id == ha).values(ha=True))
    replicas = Recorder()
    ctrl.replicas.fail_over_node = replicas.fail_over_node  # type: ignore[method-assign,assignment]
    ctrl.settings = dataclasses.replace(ctrl.settings, lease_timeout=0.5, fence_margin=60)
    answering = ctrl.nodes["node-n1"]
    ctrl.nodes["node-n1"] = Silent()  # type: ignore[assignment]
    await asyncio.sleep(1.1)  # SQLite's clock has whole seconds
    await ctrl.cluster.heartbeat_once()
    assert not ctrl.cluster.reachable("node-n1") and "node-n1" not in ctrl.cluster.dead
    assert (await api.get("/v1/nodes/n1")).json()["lease"] == "expired"
    assert (await api.get(f"/v1/instances/{plain}")).json()["state"] != "stopped"
    ctrl.settings = dataclasses.replace(ctrl.settings, fence_margin=0.5)  # past the margin
    await asyncio.sleep(1.1)
    await ctrl.cluster.heartbeat_once()
    assert "node-n1" in ctrl.cluster.dead and set(replicas.asked) == {"node-n1"}
    assert (await api.get("/v1/nodes/n1")).json()["lease"] == "dead"
    # dead stays dead until it answers: the peers are not asked again on the next passes
    # (each probe of a silent address waits out its timeout, and that held up the other
    # nodes' heartbeats past their own leases)
    probes: list[str] = []

    async def probe(node_id: str) -> bool:
        probes.append(node_id)
        return False

    ctrl.cluster._reached_by_peer = probe  # type: ignore[method-assign]
    await ctrl.cluster.heartbeat_once()
    assert probes == [] and replicas.asked.count("node-n1") >= 2  # handed over again
    del ctrl.cluster._reached_by_peer
    shown = (await api.get(f"/v1/instances/{plain}")).json()
    assert shown["state"] == "stopped" and shown["state_reason"].startswith("node-lost")
    assert (await api.get(f"/v1/instances/{ha}")).json()["state"] != "stopped"

    # it returns: the plain instance is found running there and adopted (same pid)
    ctrl.nodes["node-n1"] = answering
    await ctrl.cluster.heartbeat_once()
    assert "node-n1" not in ctrl.cluster.dead
    assert (await api.get("/v1/nodes/n1")).json()["lease"] == "held"
    await ctrl.reconciler.reconcile_once()
    assert (await api.get(f"/v1/instances/{plain}")).json()["state"] == "running"
    assert node.running[plain]


async def test_a_lost_instance_starts_again_when_its_node_returns_without_it(
    api: httpx.AsyncClient, ctrl: Controller, node: FakeNode
) -> None:
    await _joined(ctrl)
    iid = await _run(api, ctrl, "lost")
    ctrl.settings = dataclasses.replace(ctrl.settings, lease_timeout=0.5, fence_margin=0.5)
    answering = ctrl.nodes["node-n1"]
    ctrl.nodes["node-n1"] = Silent()  # type: ignore[assignment]
    await asyncio.sleep(2.1)
    await ctrl.cluster.heartbeat_once()
    assert (await api.get(f"/v1/instances/{iid}")).json()["state"] == "stopped"
    node.running.pop(iid)  # the node rebooted: its QEMUs are gone
    ctrl.nodes["node-n1"] = answering
    await ctrl.cluster.heartbeat_once()
    await ctrl.reconciler.reconcile_once()
    assert (await api.get(f"/v1/instances/{iid}")).json()["state"] == "running"
    assert iid in node.running


async def test_a_node_a_peer_still_reaches_is_not_declared_dead(
    ctrl: Controller, node: FakeNode
) -> None:
    other = FakeNode("n2")
    other.heard_peers = {"192.0.2.11:8774": 0.5}  # its hellos still arrive there
    from tests.unit.helpers import node_server

    async with node_server(other) as url:
        from corral.node.remote import connect_node

        client, remote = connect_node(url)
        try:
            await ctrl.add_node(client, "n2")
            async with ctrl.store.write() as s:
                await s.execute(
                    update(Node)
                    .where(Node.id == "node-n1")
                    .values(address="https://192.0.2.11:8774")
                )
            replicas = Recorder()
            ctrl.replicas.fail_over_node = replicas.fail_over_node  # type: ignore[method-assign,assignment]
            ctrl.settings = dataclasses.replace(ctrl.settings, lease_timeout=0.5, fence_margin=0.5)
            ctrl.nodes["node-n1"] = Silent()  # type: ignore[assignment]
            await asyncio.sleep(2.1)
            await ctrl.cluster.heartbeat_once()
            assert not ctrl.cluster.reachable("node-n1")
            assert "node-n1" in ctrl.cluster.partial and "node-n1" not in ctrl.cluster.dead
            assert replicas.asked == []
            # heard from, but longer ago than its guard can hold its HA instances (a hung agent,
            # whose socket still takes connections): dead
            other.heard_peers = {"192.0.2.11:8774": HEARD_WITHIN + 0.1}
            await ctrl.cluster.heartbeat_once()
            assert "node-n1" in ctrl.cluster.dead and set(replicas.asked) == {"node-n1"}
        finally:
            ctrl.nodes.pop("node-n2", None)
            await remote.aclose()


async def test_a_returning_node_has_its_stale_copy_of_a_moved_instance_killed(
    api: httpx.AsyncClient, ctrl: Controller, node: FakeNode
) -> None:
    iid = await _run(api, ctrl, "moved")
    async with ctrl.store.write() as s:
        s.add(Node(id="node-n9", name="n9", address="https://192.0.2.19:8774"))
        await s.flush()
        await s.execute(
            update(Instance).where(Instance.id == iid).values(node_id="node-n9", generation=2)
        )
    assert iid in node.running
    await ctrl.reconciler.reconcile_once()
    assert iid not in node.running, "the stale copy was left running"
    assert node.calls.count(("start", iid)) == 1  # never started again there


async def test_the_controllers_own_node_is_never_declared_dead(
    api: httpx.AsyncClient, ctrl: Controller
) -> None:
    iid = await _run(api, ctrl, "local")
    ctrl.settings = dataclasses.replace(
        ctrl.settings, lease_timeout=0.5, fence_margin=0.5, node_timeout=0.5
    )
    ctrl.nodes["node-n1"] = Silent()  # type: ignore[assignment]
    await asyncio.sleep(2.1)
    await ctrl.cluster.heartbeat_once()
    assert not ctrl.cluster.reachable("node-n1") and "node-n1" not in ctrl.cluster.dead
    assert (await api.get(f"/v1/instances/{iid}")).json()["state"] != "stopped"


def test_a_controller_that_just_took_the_lock_counts_leases_from_then() -> None:
    import datetime as dt

    from corral.controller.cluster import lease_start

    old = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
    took = old + dt.timedelta(minutes=5)  # the controller was down in between
    assert lease_start(old, took) == took  # not dead at once: a whole lease from the takeover
    assert lease_start(took + dt.timedelta(seconds=3), took) == took + dt.timedelta(seconds=3)
    assert lease_start(None, took) == took
    assert lease_start(old, None) == old


async def test_a_copy_of_an_instance_under_an_operation_is_not_killed_as_stale(
    api: httpx.AsyncClient, ctrl: Controller, node: FakeNode
) -> None:
    """A live migration's destination runs its copy before the record moves there: a reconcile
    pass in that window must leave it (it killed it, and the migration failed at its
    switch-over); once the operation has ended, a copy the store does not place here goes."""
    iid = await _run(api, ctrl, "moving")
    async with ctrl.store.write() as s:
        s.add(Node(id="node-n8", name="n8", address="https://192.0.2.18:8774"))
        await s.flush()
        await s.execute(update(Instance).where(Instance.id == iid).values(node_id="node-n8"))
        op = ctrl.ops.new(
            "instance-migrate",
            account_id=None,
            target_kind="instance",
            target_id=iid,
            params={"phase": "switching"},
        )
        s.add(op)
    await ctrl.reconciler.reconcile_once()
    assert iid in node.running, "the migration's copy was killed as stale"
    async with ctrl.store.write() as s:
        await s.execute(update(Operation).where(Operation.id == op.id).values(status="failed"))
    await ctrl.reconciler.reconcile_once()
    assert iid not in node.running
