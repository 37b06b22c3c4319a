"""The reconciler against the fake node: it restarts crashed instances per policy, backs off a
crash loop, finishes interrupted work and reports strays."""

from __future__ import annotations

import asyncio

import pytest

from corral.config import Settings
from corral.controller.instances import tap_name
from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.node.spec import EventBatch, InstanceSpec, NetworkSpec
from corral.store import Store
from corral.store.models import Node
from tests.unit.helpers import addresses, admin, finish, reload, run

pytestmark = pytest.mark.postgres  # also on PostgreSQL


async def _reconcile(ctrl: Controller) -> None:
    await ctrl.reconciler.reconcile_once()


async def test_crashed_instance_is_restarted_under_policy_on_failure(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    node.crash(inst.id)
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert inst.id in node.running
    assert (row.state, row.desired_state, row.pid) == ("running", "running", node.running[inst.id])
    assert row.pid != inst.pid
    assert row.restarts == 1
    assert row.state_reason == ("QEMU killed by SIGKILL; restarted (restart policy on-failure)")


async def test_crashed_instance_with_policy_never_is_marked_stopped(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web", restart_policy="never")
    node.crash(inst.id)
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert inst.id not in node.running
    assert (row.state, row.desired_state, row.pid) == ("stopped", "stopped", None)
    assert row.state_reason == (
        "Server.InternalError: QEMU killed by SIGKILL (restart policy never)"
    )
    assert row.private_ip == "10.88.0.10"  # a stopped instance keeps its address
    await _reconcile(ctrl)  # and stays stopped
    assert inst.id not in node.running


async def test_guest_power_off_marks_the_instance_stopped(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    node.crash(inst.id, reason="guest-shutdown")
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert (row.state, row.desired_state) == ("stopped", "stopped")
    assert row.state_reason.startswith("Client.InstanceInitiatedShutdown")
    assert inst.id not in node.running


async def test_guest_power_off_with_policy_always_is_restarted(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web", restart_policy="always")
    node.crash(inst.id, reason="guest-shutdown")
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert (row.state, row.restarts) == ("running", 1)
    assert inst.id in node.running


async def test_a_crash_loop_is_backed_off(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    for restarts in (1, 2):
        node.crash(inst.id)
        await _reconcile(ctrl)
        assert (await reload(ctrl, inst.id)).restarts == restarts
        assert inst.id in node.running
    node.crash(inst.id)  # the third crash within seconds: the next restart is due later
    await _reconcile(ctrl)
    assert inst.id not in node.running
    assert (await reload(ctrl, inst.id)).restarts == 2
    assert ctrl.reconciler.next_restart_at(inst.id) > 0


async def test_failed_restart_records_why(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    node.crash(inst.id)
    node.fail_start.add(inst.id)
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert row.state_reason.startswith("restart failed: fake launch failure")
    assert row.restarts == 0


async def test_interrupted_termination_is_finished(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    # a crash after the terminate request was recorded, before the node was told
    await ctrl.instances._set(inst.id, desired_state="terminated", state="shutting-down")
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid, row.private_ip) == ("terminated", None, None)
    assert row.terminated_at is not None
    assert ("destroy", inst.id) in node.calls
    assert inst.id not in node.specs and inst.id not in node.running
    assert await addresses(ctrl) == {}
    (hosts,) = node.hosts.values()
    assert hosts == []


async def test_running_instance_that_should_be_stopped_is_stopped(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    await ctrl.instances._set(inst.id, desired_state="stopped", state="stopping")
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid) == ("stopped", None)
    assert inst.id not in node.running


async def test_interrupted_start_is_resumed(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    node.running.pop(inst.id)  # the node never got to start it
    await ctrl.instances._set(inst.id, state="pending", pid=None)
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid, row.restarts) == ("running", node.running[inst.id], 0)


async def test_instance_found_running_under_another_pid_is_adopted(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    node.running[inst.id] = 4242
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid) == ("running", 4242)


async def test_instance_as_recorded_is_left_alone(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    calls = list(node.calls)
    await _reconcile(ctrl)
    assert node.calls == calls
    assert (await reload(ctrl, inst.id)).pid == node.running[inst.id]


async def test_terminated_instances_are_not_touched(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.terminate(admin(ctrl), "web")
    await finish(ctrl, op)
    calls = list(node.calls)
    await _reconcile(ctrl)
    assert node.calls == calls
    assert (await reload(ctrl, inst.id)).state == "terminated"


async def test_instance_with_an_operation_in_flight_is_skipped(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    async with ctrl.instances.lock(inst.id):  # as an operation holding the instance would
        node.crash(inst.id)  # its exit event wakes the reconciler, which must skip it too
        await _reconcile(ctrl)
        assert inst.id not in node.running
    await _reconcile(ctrl)
    assert inst.id in node.running


async def test_an_instance_the_node_reports_but_the_store_does_not_know_is_listed_as_a_stray(
    ctrl: Controller, node: FakeNode
) -> None:
    """The node here is the fake one; a real stray QEMU is tests/integration/test_host.py."""
    net = NetworkSpec(
        id="net-x",
        namespace="ns",
        bridge="cbr0",
        cidr="10.88.0.0/24",
        gateway="10.88.0.1",
        domain="corral.internal",
    )
    stray = "i-0000000000000beef"
    node.specs[stray] = InstanceSpec(
        id=stray,
        name="stray",
        image="0" * 64,
        memory=64 << 20,
        disk_size=64 << 20,
        mac="52:54:00:00:be:ef",
        network=net,
        tap=tap_name(stray),
    )
    node.running[stray] = 777
    await _reconcile(ctrl)
    (node_id,) = ctrl.nodes
    assert ctrl.reconciler.strays[node_id] == [
        f"{stray}: QEMU pid 777 runs but the store has no such instance"
    ]
    assert node.running[stray] == 777  # reported, never killed
    node.running.pop(stray)
    await _reconcile(ctrl)
    assert ctrl.reconciler.strays[node_id] == [
        f"{stray}: files on the node but no such instance in the store"
    ]


@pytest.mark.parametrize("policy", ["always", "on-failure"])
async def test_instance_gone_from_the_node_is_restarted(
    ctrl: Controller, node: FakeNode, policy: str
) -> None:
    inst = await run(ctrl, name="web", restart_policy=policy)
    node.running.pop(inst.id)  # gone without an exit record: nobody was watching
    await _reconcile(ctrl)
    row = await reload(ctrl, inst.id)
    assert row.state == "running" and inst.id in node.running
    assert row.state_reason.startswith("QEMU exited while Corral was not watching")


async def test_an_exit_event_from_the_node_wakes_the_reconciler(
    ctrl: Controller, node: FakeNode
) -> None:
    """No reconcile tick comes (the interval is an hour): the node's event stream, followed over
    the wire, is what makes the controller notice the crash."""
    inst = await run(ctrl, name="web", restart_policy="never")
    node.crash(inst.id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (row := await reload(ctrl, inst.id)).state != "stopped":
        assert loop.time() < deadline, f"still {row.state}: the exit event was not followed"
        await asyncio.sleep(0.05)
    assert "SIGKILL" in row.state_reason


async def test_the_controller_resumes_the_event_stream_where_it_stood(
    ctrl: Controller, node: FakeNode, settings: Settings, store: Store, image_store: ImageStore
) -> None:
    """Where the controller stands in the node's log is in the database: a controller started
    afresh asks for what came after it, not for everything nor only for what comes next."""
    inst = await run(ctrl, name="web", restart_policy="never")
    (node_id,) = ctrl.nodes
    seen = node.event_log.last
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        async with ctrl.store.read() as s:
            row = await s.get(Node, node_id)
            assert row is not None
        if row.event_seq == seen and row.event_epoch == node.event_log.epoch:
            break
        assert loop.time() < deadline, f"the controller stands at {row.event_seq}, not {seen}"
        await asyncio.sleep(0.05)
    await ctrl.close()
    node.crash(inst.id)  # while no controller follows
    asked: list[tuple[int, str]] = []
    events = node.events

    async def spy(after: int = 0, epoch: str = "", wait: float = 0.0) -> EventBatch:
        asked.append((after, epoch))
        return await events(after, epoch, wait)

    node.events = spy  # type: ignore[method-assign]
    again = Controller(settings, store, image_store)
    await again.add_node(node, "n1")
    try:
        deadline = loop.time() + 20
        while True:
            async with again.store.read() as s:
                row = await s.get(Node, node_id)
                assert row is not None
            if row.event_seq == seen + 1:
                break
            assert loop.time() < deadline, f"the new controller stands at {row.event_seq}"
            await asyncio.sleep(0.05)
        assert asked[0] == (seen, node.event_log.epoch)  # resumed, not from the start
    finally:
        await again.close()
