"""An operation owns the instances it works on, not only its target: after a kill -9 in the
middle of CreateImage (with reboot), the restarted controller must not take the powered-off
instance for a guest that shut itself down (it did: the instance stayed stopped, its desired
state rewritten, "the guest powered itself off"), and the resumed capture starts it again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from corral.config import Settings
from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.store import Store
from corral.store.models import Operation
from tests.unit.helpers import admin, finish, reload, run


async def _restarted(
    settings: Settings, store: Store, images: ImageStore, node: FakeNode, gate: asyncio.Event
) -> Controller:
    """A new controller on the same store and node, as after a crash; resumed operations of
    every kind wait at ``gate`` (so the first reconcile pass meets them unfinished)."""
    ctrl = Controller(settings, store, images)
    for kind, handler in list(ctrl.ops.handlers.items()):

        def gated(h: Callable[[Any], Awaitable[Any]] = handler) -> Callable[[Any], Awaitable[Any]]:
            async def run(op: Any) -> Any:
                await gate.wait()
                return await h(op)

            return run

        ctrl.ops.handlers[kind] = gated()
    await ctrl.add_node(node, "n1")
    await ctrl.start()  # resumes the operation, then one reconcile pass
    return ctrl


@pytest.mark.parametrize("policy", ["on-failure", "never", "always"])
async def test_kill9_during_create_image_leaves_the_instance_to_the_capture(
    settings: Settings, store: Store, image_store: ImageStore, policy: str
) -> None:
    node = FakeNode(images=image_store)
    ctrl = Controller(settings, store, image_store)
    await ctrl.add_node(node, "n1")
    await ctrl.start()
    inst = await run(ctrl, name="web", restart_policy=policy)
    # CreateImage commits its operation; the process dies one second in: the capture had
    # powered the guest off (QEMU saw the guest shut down) and was copying the disk
    started: list[Operation] = []
    ctrl.ops.start = started.append  # type: ignore[method-assign,assignment]  # killed first
    image, op = await ctrl.image_publishing.create_image(admin(ctrl), "web", "web-image")
    assert started == [op]
    await ctrl.close()
    node.crash(inst.id, reason="guest-shutdown")

    gate = asyncio.Event()
    ctrl = await _restarted(settings, store, image_store, node, gate)
    try:
        row = await reload(ctrl, inst.id)
        assert (row.state, row.desired_state) == ("running", "running"), row.state_reason
        assert "powered" not in row.state_reason
        assert inst.id not in node.running  # the reconciler did not start it behind the op
        await ctrl.reconciler.reconcile_once()  # nor on a later pass
        assert inst.id not in node.running
        gate.set()
        done = await finish(ctrl, await ctrl.ops.get(op.id))
        assert done.status == "succeeded", done.error
        row = await reload(ctrl, inst.id)
        assert (row.state, row.desired_state) == ("running", "running")
        assert row.pid == node.running[inst.id]
        assert row.restarts == inst.restarts
        assert (await ctrl.images.get(admin(ctrl), image.id)).state == "available"
        await ctrl.reconciler.reconcile_once()
        assert (await reload(ctrl, inst.id)).state == "running"
    finally:
        gate.set()
        await ctrl.close()


async def test_kill9_during_a_forced_volume_detach_leaves_the_instance_to_the_detach(
    settings: Settings, store: Store, image_store: ImageStore
) -> None:
    """Another kind whose target is not the instance: a forced detach restarts its instance
    without the volume; killed between stopping and starting it, the resumed detach (not the
    reconciler) starts it again."""
    node = FakeNode(images=image_store)
    ctrl = Controller(settings, store, image_store)
    await ctrl.add_node(node, "n1")
    await ctrl.start()
    inst = await run(ctrl, name="web")
    vol, op = await ctrl.volumes.create(admin(ctrl), 1, None, name="data")
    await finish(ctrl, op)
    _, op = await ctrl.volumes.attach(admin(ctrl), vol.id, "web", None)
    await finish(ctrl, op)
    node.held.add(vol.id)  # the guest does not let go: force restarts the instance
    real_start = node.instance_start
    stopped = asyncio.Event()

    async def never_starts(spec: Any) -> int:
        stopped.set()
        await asyncio.Event().wait()  # the process dies here
        raise AssertionError("unreachable")

    node.instance_start = never_starts  # type: ignore[method-assign]
    _, op = await ctrl.volumes.detach(admin(ctrl), vol.id, force=True, timeout=1)
    assert op is not None
    await asyncio.wait_for(stopped.wait(), 10)
    await ctrl.close()  # as after kill -9: the operation is still running in the store
    assert inst.id not in node.running
    node.crash(inst.id, reason="guest-shutdown")  # the ACPI power-off, as QEMU saw it
    node.instance_start = real_start  # type: ignore[method-assign]

    gate = asyncio.Event()
    ctrl = await _restarted(settings, store, image_store, node, gate)
    try:
        row = await reload(ctrl, inst.id)
        assert (row.state, row.desired_state) == ("running", "running"), row.state_reason
        assert inst.id not in node.running
        gate.set()
        done = await finish(ctrl, await ctrl.ops.get(op.id))
        assert done.status == "succeeded", done.error
        await ctrl.reconciler.reconcile_once()
        row = await reload(ctrl, inst.id)
        assert (row.state, row.desired_state) == ("running", "running"), row.state_reason
        assert row.pid == node.running[inst.id]
        assert (await ctrl.volumes.get(admin(ctrl), vol.id)).state == "available"
    finally:
        gate.set()
        await ctrl.close()
