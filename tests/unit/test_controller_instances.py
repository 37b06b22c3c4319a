"""The controller driving a fake node: run, stop, start, reboot, terminate, and the checks a
request must pass before anything is recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import TimeoutError as PoolTimeout

from corral.config import Settings
from corral.controller import operations
from corral.controller.service import Controller
from corral.errors import Code, CorralError, Exists, Invalid, NoResources, NotFound, WrongState
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.store import Store
from corral.store.models import Instance, Operation, utcnow
from tests.unit.helpers import (
    IMAGE_VIRTUAL_SIZE,
    add_image,
    addresses,
    admin,
    finish,
    reload,
    req,
    run,
)


async def _count(ctrl: Controller, model: type) -> int:
    async with ctrl.store.read() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


def _hosts(node: FakeNode) -> list[tuple[str, str, list[str]]]:
    (records,) = node.hosts.values()
    return [(h.address, h.mac, h.names) for h in records]


# -- start-up ---------------------------------------------------------------------------------
async def test_start_writes_admin_credentials_and_sets_up_the_default_network(
    ctrl: Controller, settings: Settings, node: FakeNode
) -> None:
    creds = settings.state_dir / "admin.credentials"
    data = json.loads(creds.read_text())
    assert creds.stat().st_mode & 0o777 == 0o600
    assert data["endpoint"] == settings.api_url
    assert data["account_id"] == admin(ctrl).account_id
    assert admin(ctrl).admin is True
    assert list(node.hosts.values()) == [[]]  # network ensured, no hosts yet


async def test_start_registers_the_images_of_the_image_store(
    ctrl: Controller, image_store: ImageStore
) -> None:
    (image,) = await ctrl.images.list(admin(ctrl))
    (manifest,) = image_store.list()
    assert (image.name, image.digest, image.state) == ("tiny", manifest.digest, "available")
    assert image.virtual_size == IMAGE_VIRTUAL_SIZE
    assert image.id.startswith("ami-")


# -- run ---------------------------------------------------------------------------------------
async def test_run_starts_the_instance_and_gives_the_node_its_address_and_host_names(
    ctrl: Controller, node: FakeNode
) -> None:
    """What the controller hands the (fake) node; dnsmasq answering with it is shown in
    tests/integration/test_network.py."""
    inst, op = await ctrl.instances.run(admin(ctrl), req(name="web"))
    assert (inst.state, inst.desired_state) == ("pending", "running")
    assert inst.private_ip == "10.88.0.10"
    done = await finish(ctrl, op)
    assert done.status == "succeeded"
    assert done.result == {
        "instance_id": inst.id,
        "pid": node.running[inst.id],
        "private_ip": "10.88.0.10",
    }
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid, row.state_reason) == ("running", node.running[inst.id], "")
    assert row.started_at is not None
    assert await addresses(ctrl) == {"10.88.0.10": inst.id}
    assert _hosts(node) == [
        (
            "10.88.0.10",
            row.mac,
            [f"{inst.id}.corral.internal", f"web.{row.account_id}.corral.internal"],
        )
    ]
    assert node.calls == [("create", inst.id), ("start", inst.id)]
    spec = node.specs[inst.id]
    assert (spec.memory, spec.disk_size, spec.address) == (
        256 << 20,
        IMAGE_VIRTUAL_SIZE,
        "10.88.0.10",
    )
    events = [e.kind for e in await ctrl.ops.events(done.id)]
    assert events[0] == "started" and events[-1] == "succeeded" and "progress" in events


async def test_a_launch_that_found_the_store_busy_runs_again_rather_than_terminating(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1,000-launch burst on PostgreSQL queued writes past the pool's wait, and the launches
    that hit it were undone (terminated). Such an error now runs the launch again."""
    monkeypatch.setattr(operations, "BUSY_BACKOFF", 0.01)
    real = ctrl.volumes.ensure_launch_volumes  # a write of the launch, in the controller
    calls = 0

    async def busy_once(iid: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise PoolTimeout("QueuePool limit of size 1 overflow 0 reached")
        return await real(iid)

    monkeypatch.setattr(ctrl.volumes, "ensure_launch_volumes", busy_once)
    inst, op = await ctrl.instances.run(admin(ctrl), req(name="burst"))
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and calls == 2
    row = await reload(ctrl, inst.id)
    assert row.state == "running" and row.private_ip == inst.private_ip
    events = [e.message for e in await ctrl.ops.events(done.id)]
    assert any(m.startswith("retrying: the store was busy") for m in events), events


async def test_run_without_a_name_names_the_instance_after_its_image(ctrl: Controller) -> None:
    inst = await run(ctrl)
    assert inst.name == f"tiny-{inst.id[2:7]}"


async def test_run_gives_each_instance_its_own_address_and_mac(ctrl: Controller) -> None:
    a, b = await run(ctrl, name="a"), await run(ctrl, name="b")
    assert (a.private_ip, b.private_ip) == ("10.88.0.10", "10.88.0.11")
    assert a.mac != b.mac


async def test_run_with_a_wanted_address_gets_it(ctrl: Controller) -> None:
    assert (await run(ctrl, name="web", address="10.88.0.42")).private_ip == "10.88.0.42"


async def test_run_with_an_address_in_use_is_exists_and_records_nothing(ctrl: Controller) -> None:
    await run(ctrl, name="a", address="10.88.0.42")
    with pytest.raises(Exists) as info:
        await ctrl.instances.run(admin(ctrl), req(name="b", address="10.88.0.42"))
    assert (info.value.code, info.value.field) == (Code.EXISTS, "address")
    assert await _count(ctrl, Instance) == 1


async def test_run_with_memory_in_plain_mebibytes_and_sizes(
    ctrl: Controller, node: FakeNode
) -> None:
    a = await run(ctrl, name="a", memory=128)
    b = await run(ctrl, name="b", memory="1G", disk="1G")
    assert (a.memory, b.memory, b.disk_size) == (128 << 20, 1 << 30, 1 << 30)


@pytest.mark.parametrize("memory", ["12", 12, "63M", "abc", "100K", "64.5M", "-1G", ""])
async def test_run_with_bad_memory_is_invalid_naming_memory(
    ctrl: Controller, memory: str | int
) -> None:
    with pytest.raises(Invalid) as info:
        await ctrl.instances.run(admin(ctrl), req(memory=memory))
    assert (info.value.code, info.value.field) == (Code.INVALID, "memory")
    assert await _count(ctrl, Instance) == 0


async def test_run_with_the_smallest_memory_is_accepted(ctrl: Controller) -> None:
    assert (await run(ctrl, memory="64M")).memory == 64 << 20


async def test_run_with_more_memory_than_any_node_has_is_no_resources(ctrl: Controller) -> None:
    with pytest.raises(NoResources) as info:
        await ctrl.instances.run(admin(ctrl), req(memory="16G"))
    assert info.value.code == Code.NO_RESOURCES
    assert "--memory" in info.value.message
    assert await _count(ctrl, Instance) == 0


async def test_run_with_a_disk_smaller_than_the_image_is_invalid_naming_disk(
    ctrl: Controller,
) -> None:
    with pytest.raises(Invalid) as info:
        await ctrl.instances.run(admin(ctrl), req(disk="32M"))
    assert (info.value.code, info.value.field) == (Code.INVALID, "disk")
    assert "64M or more" in info.value.message


async def test_run_with_a_bad_name_is_invalid_naming_name(ctrl: Controller) -> None:
    with pytest.raises(Invalid) as info:
        await ctrl.instances.run(admin(ctrl), req(name="Web_1"))
    assert (info.value.code, info.value.field) == (Code.INVALID, "name")


async def test_run_with_too_much_user_data_is_invalid_naming_user_data(ctrl: Controller) -> None:
    with pytest.raises(Invalid) as info:
        await ctrl.instances.run(admin(ctrl), req(user_data="x" * (16 * 1024 + 1)))
    assert (info.value.code, info.value.field) == (Code.INVALID, "user_data")


async def test_run_with_a_duplicate_name_is_exists(ctrl: Controller) -> None:
    first = await run(ctrl, name="web")
    with pytest.raises(Exists) as info:
        await ctrl.instances.run(admin(ctrl), req(name="web"))
    err = info.value
    assert (err.code, err.field, err.resource) == (Code.EXISTS, "name", "instance")
    assert first.id in err.message
    assert await _count(ctrl, Instance) == 1
    assert await addresses(ctrl) == {"10.88.0.10": first.id}


async def test_name_of_a_terminated_instance_can_be_used_again(ctrl: Controller) -> None:
    first = await run(ctrl, name="web")
    _, op = await ctrl.instances.terminate(admin(ctrl), "web")
    await finish(ctrl, op)
    second = await run(ctrl, name="web")
    assert second.id != first.id
    assert (await ctrl.instances.get(admin(ctrl), "web")).id == second.id


async def test_run_of_an_unknown_image_is_not_found_naming_image(ctrl: Controller) -> None:
    with pytest.raises(NotFound) as info:
        await ctrl.instances.run(admin(ctrl), req(image="debian"))
    err = info.value
    assert (err.code, err.field, err.resource) == (Code.NOT_FOUND, "image", "image")
    assert "corral image ls" in err.message


async def test_run_finds_the_image_by_id_and_by_name_and_version(ctrl: Controller) -> None:
    (image,) = await ctrl.images.list(admin(ctrl))
    assert (await run(ctrl, name="a", image=image.id)).image_id == image.id
    assert (await run(ctrl, name="b", image="tiny:1")).image_id == image.id


async def test_run_with_an_unknown_key_pair_is_not_found_naming_keys(ctrl: Controller) -> None:
    with pytest.raises(NotFound) as info:
        await ctrl.instances.run(admin(ctrl), req(keys=["nope"]))
    err = info.value
    assert (err.code, err.field, err.resource) == (Code.NOT_FOUND, "keys", "key_pair")
    assert "corral key add" in err.message


async def test_run_with_key_pairs_and_inline_keys_records_them_all(ctrl: Controller) -> None:
    kp, _ = await ctrl.keypairs.add(admin(ctrl), "laptop", None)
    inline, _ = await ctrl.keypairs.add(admin(ctrl), "other", None)
    inst = await run(ctrl, keys=["laptop"], public_keys=[inline.public_key])
    assert inst.ssh_keys == [inline.public_key, kp.public_key]
    assert inst.key_name == "laptop"


async def test_run_with_a_garbage_inline_key_is_invalid(ctrl: Controller) -> None:
    with pytest.raises(Invalid) as info:
        await ctrl.instances.run(admin(ctrl), req(public_keys=["not a key"]))
    assert info.value.code == Code.INVALID
    assert info.value.field == "public_keys"


async def test_run_of_a_deregistered_image_is_not_found(ctrl: Controller) -> None:
    await ctrl.images.remove(admin(ctrl), "tiny")
    with pytest.raises(NotFound):
        await ctrl.instances.run(admin(ctrl), req())


async def test_failed_start_leaves_nothing_behind(ctrl: Controller, node: FakeNode) -> None:
    inst, op = await ctrl.instances.run(admin(ctrl), req(name="web"))
    # the operation runs only when this test next yields to the event loop
    node.fail_start.add(inst.id)
    done = await finish(ctrl, op)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error["code"] == "internal"
    assert "fake launch failure" in done.error["message"]
    row = await reload(ctrl, inst.id)
    assert (row.state, row.desired_state, row.pid, row.private_ip) == (
        "terminated",
        "terminated",
        None,
        None,
    )
    assert row.state_reason.startswith("Server.InternalError: fake launch failure")
    assert row.terminated_at is not None
    assert await addresses(ctrl) == {}
    assert ("destroy", inst.id) in node.calls
    assert inst.id not in node.specs and inst.id not in node.running
    assert _hosts(node) == []
    # the name and the address are free again
    again = await run(ctrl, name="web")
    assert again.private_ip == "10.88.0.10"


async def test_failure_creating_the_disk_leaves_nothing_behind(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_create(spec: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(node, "instance_create", broken_create)
    inst, op = await ctrl.instances.run(admin(ctrl), req(name="web"))
    done = await finish(ctrl, op)
    assert done.status == "failed"
    assert done.error is not None and done.error["code"] == "internal"
    row = await reload(ctrl, inst.id)
    assert row.state == "terminated"
    assert row.state_reason == "Server.InternalError: RuntimeError('disk full')"
    assert await addresses(ctrl) == {}
    assert ("destroy", inst.id) in node.calls


async def test_cancelled_run_leaves_no_instance_behind(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = asyncio.Event()

    async def hanging_start(spec: object) -> int:
        entered.set()
        await asyncio.Event().wait()  # QEMU never comes up
        raise AssertionError("unreachable")

    monkeypatch.setattr(node, "instance_start", hanging_start)
    inst, op = await ctrl.instances.run(admin(ctrl), req(name="web"))
    await asyncio.wait_for(entered.wait(), 5)
    await ctrl.ops.cancel(op.id)
    assert (await finish(ctrl, op)).status == "cancelled"
    monkeypatch.undo()  # the node works again
    await ctrl.reconciler.reconcile_once()
    row = await reload(ctrl, inst.id)
    assert inst.id not in node.running
    assert row.state == "terminated"
    assert await addresses(ctrl) == {}


async def test_same_name_and_version_with_other_content_is_kept_as_a_rebuild(
    ctrl: Controller, image_store: ImageStore, tmp_path: Path
) -> None:
    rebuilt = add_image(image_store, tmp_path / "rebuild", name="tiny", version="1")
    rebuilt = rebuilt.model_copy(update={"description": "rebuilt"})
    image_store.put_manifest(rebuilt)
    row = await ctrl.images.register(rebuilt)
    assert row.version == f"1-{rebuilt.digest[:8]}"
    assert len(await ctrl.images.list(admin(ctrl))) == 2
    assert (await ctrl.images.get(admin(ctrl), "tiny")).id == row.id  # the newest wins
    assert (await ctrl.images.register(rebuilt)).id == row.id  # idempotent


async def test_only_an_admin_may_remove_a_built_in_image(ctrl: Controller) -> None:
    other = await ctrl.accounts.create("alice")
    key = await ctrl.accounts.create_key(other.id)
    alice = await ctrl.accounts.authenticate(key.id, key.secret)
    with pytest.raises(WrongState) as info:
        await ctrl.images.remove(alice, "tiny")
    assert (info.value.code, info.value.resource) == (Code.WRONG_STATE, "image")
    assert (await ctrl.images.get(alice, "tiny")).state == "available"


async def test_removing_an_unused_image_deletes_its_parts(
    ctrl: Controller, image_store: ImageStore
) -> None:
    (manifest,) = image_store.list()
    row = await ctrl.images.remove(admin(ctrl), "tiny")
    assert row.state == "deregistered"
    assert not image_store.has(manifest.digest)
    assert list(image_store.blobs.iterdir()) == []


# -- stop, start, reboot, terminate -----------------------------------------------------------
async def test_stop_powers_off_and_keeps_the_address(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    row, op = await ctrl.instances.stop(admin(ctrl), "web")
    assert (row.state, row.desired_state) == ("stopping", "stopped")
    assert row.state_reason.startswith("User initiated (")
    done = await finish(ctrl, op)
    assert (done.status, done.result) == ("succeeded", {"instance_id": inst.id, "how": "requested"})
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid) == ("stopped", None)
    assert row.stopped_at is not None
    assert inst.id not in node.running
    assert row.private_ip == "10.88.0.10"
    assert await addresses(ctrl) == {"10.88.0.10": inst.id}


async def test_stop_of_a_stopped_instance_is_a_no_op(ctrl: Controller) -> None:
    await run(ctrl, name="web")
    _, op = await ctrl.instances.stop(admin(ctrl), "web")
    await finish(ctrl, op)
    row, again = await ctrl.instances.stop(admin(ctrl), "web")
    assert again is None
    assert row.state == "stopped"


async def test_start_of_a_stopped_instance_runs_it_again(ctrl: Controller, node: FakeNode) -> None:
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.stop(admin(ctrl), "web")
    await finish(ctrl, op)
    row, op = await ctrl.instances.start(admin(ctrl), inst.id)
    assert (row.state, row.desired_state) == ("pending", "running")
    done = await finish(ctrl, op)
    assert done.status == "succeeded"
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid, row.stopped_at) == ("running", node.running[inst.id], None)


async def test_start_of_a_running_instance_is_a_no_op(ctrl: Controller) -> None:
    await run(ctrl, name="web")
    row, op = await ctrl.instances.start(admin(ctrl), "web")
    assert op is None
    assert row.state == "running"


async def test_failed_start_of_a_stopped_instance_leaves_it_stopped_with_the_reason(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.stop(admin(ctrl), "web")
    await finish(ctrl, op)
    node.fail_start.add(inst.id)
    _, op = await ctrl.instances.start(admin(ctrl), "web")
    done = await finish(ctrl, op)
    assert done.status == "failed"
    row = await reload(ctrl, inst.id)
    assert (row.state, row.desired_state) == ("stopped", "stopped")
    assert row.state_reason.startswith("Server.InternalError: fake launch failure")


async def test_reboot_of_a_running_instance_succeeds_with_the_nodes_answer(
    ctrl: Controller,
) -> None:
    """The fake node always answers "guest reboot"; that the real guest reboots (a new boot
    id) is tests/integration/test_lifecycle.py."""
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.reboot(admin(ctrl), "web")
    done = await finish(ctrl, op)
    assert (done.status, done.result) == (
        "succeeded",
        {"instance_id": inst.id, "how": "guest reboot"},
    )
    assert (await reload(ctrl, inst.id)).state == "running"


async def test_reboot_of_a_stopped_instance_is_wrong_state(ctrl: Controller) -> None:
    await run(ctrl, name="web")
    _, op = await ctrl.instances.stop(admin(ctrl), "web")
    await finish(ctrl, op)
    with pytest.raises(WrongState) as info:
        await ctrl.instances.reboot(admin(ctrl), "web")
    assert (info.value.code, info.value.resource) == (Code.WRONG_STATE, "instance")
    assert "start it first" in info.value.message


async def test_terminate_destroys_the_instance_and_frees_its_address(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    row, op = await ctrl.instances.terminate(admin(ctrl), "web")
    assert (row.state, row.desired_state) == ("shutting-down", "terminated")
    done = await finish(ctrl, op)
    assert (done.status, done.result) == ("succeeded", {"instance_id": inst.id})
    row = await reload(ctrl, inst.id)
    assert (row.state, row.pid, row.private_ip) == ("terminated", None, None)
    assert row.terminated_at is not None
    assert await addresses(ctrl) == {}
    assert node.calls[-2:] == [("stop", inst.id), ("destroy", inst.id)]
    assert inst.id not in node.specs
    assert _hosts(node) == []


async def test_terminate_of_a_stopped_instance_works(ctrl: Controller) -> None:
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.stop(admin(ctrl), "web")
    await finish(ctrl, op)
    _, op = await ctrl.instances.terminate(admin(ctrl), inst.id)
    assert (await finish(ctrl, op)).status == "succeeded"
    assert (await reload(ctrl, inst.id)).state == "terminated"


async def test_terminate_of_a_terminated_instance_is_a_no_op(ctrl: Controller) -> None:
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.terminate(admin(ctrl), "web")
    await finish(ctrl, op)
    row, again = await ctrl.instances.terminate(admin(ctrl), inst.id)
    assert again is None
    assert row.state == "terminated"


@pytest.mark.parametrize("request_", ["start", "stop", "reboot"])
async def test_requests_on_a_terminated_instance_are_wrong_state(
    ctrl: Controller, request_: str
) -> None:
    inst = await run(ctrl, name="web")
    _, op = await ctrl.instances.terminate(admin(ctrl), "web")
    await finish(ctrl, op)
    with pytest.raises(WrongState) as info:
        await getattr(ctrl.instances, request_)(admin(ctrl), inst.id)
    assert info.value.code == Code.WRONG_STATE


@pytest.mark.parametrize("request_", ["start", "stop", "reboot", "terminate", "get"])
async def test_requests_on_an_unknown_instance_are_not_found(
    ctrl: Controller, request_: str
) -> None:
    with pytest.raises(NotFound) as info:
        await getattr(ctrl.instances, request_)(admin(ctrl), "ghost")
    err = info.value
    assert (err.code, err.field, err.resource) == (Code.NOT_FOUND, "instance", "instance")


async def test_instances_of_another_account_are_not_visible(ctrl: Controller) -> None:
    inst = await run(ctrl, name="web")
    other = await ctrl.accounts.create("alice")
    key = await ctrl.accounts.create_key(other.id)
    alice = await ctrl.accounts.authenticate(key.id, key.secret)
    assert await ctrl.instances.list(alice) == []
    with pytest.raises(NotFound):
        await ctrl.instances.stop(alice, inst.id)


async def test_list_can_leave_terminated_instances_out(ctrl: Controller) -> None:
    await run(ctrl, name="gone")
    keep = await run(ctrl, name="keep")
    _, op = await ctrl.instances.terminate(admin(ctrl), "gone")
    await finish(ctrl, op)
    assert len(await ctrl.instances.list(admin(ctrl))) == 2
    assert [i.id for i in await ctrl.instances.list(admin(ctrl), include_terminated=False)] == [
        keep.id
    ]


async def test_stop_all_stops_every_running_instance(ctrl: Controller, node: FakeNode) -> None:
    a, b = await run(ctrl, name="a"), await run(ctrl, name="b")
    await ctrl.stop_all(timeout=1)
    assert node.running == {}
    assert [(await reload(ctrl, i.id)).state for i in (a, b)] == ["stopped", "stopped"]


# -- restart and purge --------------------------------------------------------------------------
async def test_a_restarted_controller_adopts_running_instances_and_keeps_its_key(
    ctrl: Controller, settings: Settings, store: Store, image_store: ImageStore, node: FakeNode
) -> None:
    inst = await run(ctrl, name="web")
    key_id = admin(ctrl).access_key_id
    await ctrl.close()
    calls = len(node.calls)
    again = Controller(settings, store, image_store)
    await again.add_node(node, "n1")
    await again.start()
    try:
        row = await reload(again, inst.id)
        assert (row.state, row.pid) == ("running", node.running[inst.id])
        assert node.calls[calls:] == []  # nothing was started or stopped
        assert admin(again).access_key_id == key_id
        assert len(await again.images.list(admin(again))) == 1
    finally:
        await again.close()


async def test_changing_the_subnet_under_live_instances_is_refused(
    ctrl: Controller, settings: Settings, store: Store, image_store: ImageStore, node: FakeNode
) -> None:
    await run(ctrl, name="web")
    await ctrl.close()
    moved = dataclasses.replace(settings, subnet="10.77.0.0/24")
    again = Controller(moved, store, image_store)
    await again.add_node(node, "n1")
    try:
        with pytest.raises(WrongState) as info:
            await again.start()
        assert (info.value.code, info.value.field) == (Code.WRONG_STATE, "subnet")
        assert "--subnet 10.88.0.0/24" in info.value.message
    finally:
        await again.close()


async def test_changing_the_subnet_without_live_instances_moves_the_network(
    ctrl: Controller, settings: Settings, store: Store, image_store: ImageStore, node: FakeNode
) -> None:
    await ctrl.close()
    moved = dataclasses.replace(settings, subnet="10.77.0.0/24")
    again = Controller(moved, store, image_store)
    await again.add_node(node, "n1")
    await again.start()
    try:
        assert (await run(again, name="web")).private_ip == "10.77.0.10"
        (spec,) = [s.network for s in node.specs.values()]
        assert (spec.cidr, spec.gateway) == ("10.77.0.0/24", "10.77.0.1")
    finally:
        await again.close()


async def test_terminated_instances_are_purged_after_an_hour(ctrl: Controller) -> None:
    old, recent = await run(ctrl, name="old"), await run(ctrl, name="recent")
    for name in ("old", "recent"):
        _, op = await ctrl.instances.terminate(admin(ctrl), name)
        await finish(ctrl, op)
    await ctrl.instances._set(old.id, terminated_at=utcnow() - dt.timedelta(hours=2))
    assert await ctrl.purge_terminated() == 1
    with pytest.raises(NotFound):
        await ctrl.instances.get(admin(ctrl), old.id)
    assert (await reload(ctrl, recent.id)).state == "terminated"
    assert await ctrl.purge_terminated() == 0


async def test_purge_keeps_running_instances_however_old(ctrl: Controller) -> None:
    inst = await run(ctrl, name="web")
    await ctrl.instances._set(inst.id, terminated_at=utcnow() - dt.timedelta(days=2))
    assert await ctrl.purge_terminated() == 0
    assert (await reload(ctrl, inst.id)).state == "running"


async def test_every_mutation_is_recorded_as_an_operation(ctrl: Controller) -> None:
    inst = await run(ctrl, name="web")
    for call in (
        ctrl.instances.stop,
        ctrl.instances.start,
        ctrl.instances.reboot,
        ctrl.instances.terminate,
    ):
        _, op = await call(admin(ctrl), inst.id)
        assert (await finish(ctrl, op)).status == "succeeded"
    async with ctrl.store.read() as s:
        types = list(
            await s.scalars(
                select(Operation.type)
                .where(Operation.target_id == inst.id)
                .order_by(Operation.created_at)
            )
        )
    assert types == [
        "instance-run",
        "instance-stop",
        "instance-start",
        "instance-reboot",
        "instance-terminate",
    ]


async def test_node_lookup_of_an_unknown_node_is_not_found(ctrl: Controller) -> None:
    with pytest.raises(CorralError) as info:
        ctrl.node("node-elsewhere")
    assert (info.value.code, info.value.resource) == (Code.NOT_FOUND, "node")
