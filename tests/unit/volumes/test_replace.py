"""`replace` and `apply` on the controller over a fake node: the new instance takes over name,
address and volumes once healthy; a failure before the cutover leaves the old one alone, one
after it rolls back; an interrupted replace resumes after a controller restart; a second apply
changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.appliances import spec as specs
from corral.config import Settings
from corral.controller import health, replace
from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.store import Store
from corral.store.models import Instance, Operation, Volume
from tests.unit.helpers import add_image, admin, finish, run

FILE: dict[str, Any] = {
    "name": "shop",
    "services": {
        "web": {
            "image": "tiny:1",
            "run": "httpd",
            "health": {"port": 80, "path": "/health"},
            "volumes": [{"name": "data", "size": "1G", "mount": "/srv/data"}],
        }
    },
}


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replace, "RELINK_WAIT", 0.3)
    monkeypatch.setattr(replace, "SETTLE", 0.2)
    monkeypatch.setattr(health, "INTERVAL", 0.01)


@pytest.fixture
async def v2(ctrl: Controller, image_store: ImageStore, tmp_path: Path) -> str:
    manifest = add_image(image_store, tmp_path / "v2", "tiny", "2")
    return (await ctrl.images.register(manifest)).id


async def _live(ctrl: Controller) -> dict[str, Instance]:
    async with ctrl.store.read() as s:
        rows = await s.scalars(select(Instance).where(Instance.state != "terminated"))
        return {r.name: r for r in rows}


async def _volumes(ctrl: Controller) -> dict[str, str | None]:
    async with ctrl.store.read() as s:
        return {v.id: v.instance_id for v in await s.scalars(select(Volume))}


async def _settle(ctrl: Controller, timeout: float = 30) -> None:
    """Wait until no operation runs (a replace starts follow-up work); fail if some still do."""
    tasks = list(ctrl.ops.tasks.values())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while tasks:
        assert loop.time() < deadline, f"operations still running after {timeout} s: {tasks}"
        await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        tasks = list(ctrl.ops.tasks.values())


async def _web_with_data(ctrl: Controller) -> tuple[Instance, str]:
    caller = admin(ctrl)
    web = await run(ctrl, name="web")
    vol, op = await ctrl.volumes.create(caller, 1, None, name="web-data", fs="ext4")
    await finish(ctrl, op)
    _, op = await ctrl.volumes.attach(caller, vol.id, "web", None)
    await finish(ctrl, op)
    return web, vol.id


async def test_replace_moves_name_address_and_volume_then_drops_the_old(
    ctrl: Controller, node: FakeNode, v2: str
) -> None:
    web, vid = await _web_with_data(ctrl)
    _, op = await ctrl.replacements.request(admin(ctrl), "web", v2)
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    await _settle(ctrl)
    live = await _live(ctrl)
    new = live["web"]
    assert new.id != web.id and new.image_id == v2 and new.private_ip == web.private_ip
    assert set(live) == {"web"}  # the old one is gone, the temporary name too
    assert (await _volumes(ctrl))[vid] == new.id
    assert vid in node.plugged[new.id]  # plugged into the running new instance
    assert ("relink", new.id) in node.calls  # its guest was told to ask DHCP again
    hosts = {h.address: h.mac for h in next(iter(node.hosts.values()))}
    assert hosts[web.private_ip or ""] == new.mac  # DHCP gives the address to the new MAC
    assert done.result["address"] == web.private_ip


async def test_falling_back_to_the_ssh_check_says_what_it_does_not_show(
    ctrl: Controller, v2: str
) -> None:
    """A plain instance has no declared check: SSH answers before user-data has started the
    service, and the progress says so; a named check gets no such warning."""
    await _web_with_data(ctrl)
    messages = []
    for check in (None, health.parse("80/health")):
        _, op = await ctrl.replacements.request(admin(ctrl), "web", v2, check=check)
        done = await finish(ctrl, op)
        assert done.status == "succeeded", done.error
        await _settle(ctrl)
        messages.append(" ".join(e.message for e in await ctrl.ops.events(op.id)))
    assert "SSH port 22" in messages[0] and "--check PORT[/PATH]" in messages[0]
    assert "HTTP GET /health on port 80" in messages[1] and "--check" not in messages[1]


async def test_a_new_instance_failing_its_check_is_removed_and_the_old_runs_on(
    ctrl: Controller, node: FakeNode, v2: str
) -> None:
    web, vid = await _web_with_data(ctrl)
    node.unhealthy.add("10.88.0.11")  # the new instance's own address
    _, op = await ctrl.replacements.request(admin(ctrl), "web", v2, timeout=0.5)
    done = await finish(ctrl, op)
    assert done.status == "failed" and done.error is not None
    assert "failed its health check" in done.error["message"]
    assert "runs on, unchanged" in done.error["message"]
    await _settle(ctrl)
    live = await _live(ctrl)
    assert set(live) == {"web"} and live["web"].id == web.id
    assert live["web"].state == "running" and web.id in node.running
    assert (await _volumes(ctrl))[vid] == web.id


async def test_a_failure_after_the_cutover_rolls_back(
    ctrl: Controller, node: FakeNode, v2: str
) -> None:
    web, vid = await _web_with_data(ctrl)
    node.unhealthy.add(web.private_ip or "")  # whoever holds the address fails
    _, op = await ctrl.replacements.request(admin(ctrl), "web", v2, timeout=0.5)
    done = await finish(ctrl, op)
    assert done.status == "failed" and done.error is not None
    assert "rolled back" in done.error["message"]
    await _settle(ctrl)
    live = await _live(ctrl)
    assert set(live) == {"web"}
    old = live["web"]
    assert old.id == web.id and old.private_ip == web.private_ip and old.state == "running"
    assert (await _volumes(ctrl))[vid] == web.id
    assert web.id in node.running and [v.id for v in node.specs[web.id].volumes] == [vid]


async def test_the_check_after_taking_over_gets_the_after_timeout_when_one_is_given(
    ctrl: Controller, node: FakeNode, v2: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--after-timeout bounds the check at the old address (a service that dies once it has
    the data is rolled back that much sooner); without it, the timeout, at most 60 s."""
    web, _ = await _web_with_data(ctrl)
    node.unhealthy.add(web.private_ip or "")  # whoever holds the address fails its check

    async def answers(address: str, count: int = 1) -> bool:
        return True  # but the guest is up (it pings): its service is what died

    monkeypatch.setattr(node, "ping", answers)
    given: list[tuple[str, float]] = []
    real_wait = health.wait

    async def recording(
        ctrl_: Controller, inst: Instance, address: str, check: Any, seconds: float, **kw: Any
    ) -> str:
        given.append((inst.id, seconds))
        return await real_wait(ctrl_, inst, address, check, min(seconds, 0.5), **kw)

    monkeypatch.setattr(health, "wait", recording)
    for after, want in ((2.5, 2.5), (None, 60.0)):
        given.clear()
        _, op = await ctrl.replacements.request(
            admin(ctrl), "web", v2, timeout=120, after_timeout=after
        )
        done = await finish(ctrl, op)
        assert done.status == "failed" and done.error is not None, done
        assert "rolled back" in done.error["message"]
        await _settle(ctrl)
        new_checks = [s for iid, s in given if iid != web.id]
        assert new_checks[-1] == want, given  # the check at the old address, after the move


async def test_a_service_that_dies_soon_after_taking_over_is_rolled_back(
    ctrl: Controller, node: FakeNode, v2: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three quick answers right after the swap are not enough: a release that dies once its
    data volume is mounted (a second later) answers those, and must still be rolled back."""
    monkeypatch.setattr(replace, "SETTLE", 0.5)  # fifty checks apart (INTERVAL: 0.01 s)
    web, vid = await _web_with_data(ctrl)
    real_check = node.health_check
    answered: dict[str, int] = {}

    async def dies_after_ten(address: str, check: Any, namespace: str = "") -> str:
        # the new instance, once the data volume is plugged into it
        owner = next(
            (i for i, v in node.plugged.items() if i != web.id and vid in v and i in node.running),
            None,
        )
        if owner is None or address != web.private_ip:
            return await real_check(address, check, namespace)
        answered[owner] = answered.get(owner, 0) + 1
        return "" if answered[owner] <= 10 else f"{address}:80 refused"

    monkeypatch.setattr(node, "health_check", dies_after_ten)
    _, op = await ctrl.replacements.request(admin(ctrl), "web", v2, timeout=30, after_timeout=1.5)
    done = await finish(ctrl, op)
    assert done.status == "failed" and done.error is not None, done
    assert "rolled back" in done.error["message"] and "refused" in done.error["message"]
    assert sum(answered.values()) > 10  # it did answer at first, and was watched on
    await _settle(ctrl)
    live = await _live(ctrl)
    assert set(live) == {"web"} and live["web"].id == web.id
    assert (await _volumes(ctrl))[vid] == web.id


async def test_an_interrupted_replace_resumes_after_a_restart(
    ctrl: Controller,
    node: FakeNode,
    v2: str,
    settings: Settings,
    store: Store,
    image_store: ImageStore,
) -> None:
    web, vid = await _web_with_data(ctrl)
    stop = node.instance_stop
    hang = asyncio.Event()

    async def hanging_stop(iid: str, timeout: float, force: bool = False) -> Any:
        if iid == web.id:
            hang.set()
            await asyncio.sleep(3600)  # the controller dies while the old one stops
        return await stop(iid, timeout, force)

    node.instance_stop = hanging_stop  # type: ignore[method-assign]
    _, op = await ctrl.replacements.request(admin(ctrl), "web", v2)
    await asyncio.wait_for(hang.wait(), 60)
    await ctrl.close()  # like a kill: the operation stays "running"
    async with store.read() as s:
        row = await s.get(Operation, op.id)
        assert row is not None and row.status == "running"
        assert row.params["phase"] == "cutover"
    node.instance_stop = stop  # type: ignore[method-assign]
    again = Controller(settings, store, image_store)
    await again.add_node(node, "n1")
    await again.start()  # resumes the operation where it was
    try:
        done = await finish(again, op)
        assert done.status == "succeeded", done.error
        await _settle(again)
        live = await _live(again)
        assert set(live) == {"web"} and live["web"].image_id == v2
        assert live["web"].private_ip == web.private_ip
        assert (await _volumes(again))[vid] == live["web"].id
    finally:
        await again.close()


async def test_apply_twice_then_a_new_image_replaces(
    ctrl: Controller, node: FakeNode, v2: str
) -> None:
    caller = admin(ctrl)
    spec = specs.validate(FILE)
    plan, op = await ctrl.appliances.apply(caller, spec)
    assert [(s.action, s.instance) for s in plan.steps] == [("create", "web")]
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    web = (await _live(ctrl))["web"]
    async with ctrl.store.read() as s:
        vol = await s.scalar(select(Volume).where(Volume.instance_id == web.id))
    assert vol is not None and vol.attach_state == "attached"
    assert [v.id for v in node.specs[web.id].volumes] == [vol.id]  # there from the first boot
    plan, op = await ctrl.appliances.apply(caller, spec)
    assert op is None and not plan.changes  # the second run is a no-op
    newer = specs.validate(
        {**FILE, "services": {"web": {**FILE["services"]["web"], "image": "tiny:2"}}}
    )
    plan, op = await ctrl.appliances.apply(caller, newer)
    assert [(s.action, s.reasons) for s in plan.steps] == [("replace", ["image tiny:1 -> tiny:2"])]
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    await _settle(ctrl)
    now = (await _live(ctrl))["web"]
    assert now.id != web.id and now.image_id == v2 and now.private_ip == web.private_ip
    assert (await _volumes(ctrl))[vol.id] == now.id
    plan, op = await ctrl.appliances.apply(caller, newer)
    assert op is None and not plan.changes
    # gone from the file: removed, its volume kept
    plan, op = await ctrl.appliances.apply(caller, specs.validate({"name": "shop"}))
    assert [(s.action, s.volumes) for s in plan.steps] == [("remove", ["keep web-data"])]
    await finish(ctrl, op)
    await _settle(ctrl)
    assert await _live(ctrl) == {}
    assert (await _volumes(ctrl))[vol.id] is None
