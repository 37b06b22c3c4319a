"""Volumes over the native REST API on a fake node: sizes like 1G, names, hot attach and detach
as operations, a volume attached elsewhere refused with nothing changed, a guest that holds on
to its disk, delete-on-termination, snapshots of running volumes, restore."""

from __future__ import annotations

from typing import Any

import httpx

from corral.controller.service import Controller
from corral.node.fake import FakeNode


async def _done(api: httpx.AsyncClient, op: dict[str, Any] | None) -> dict[str, Any]:
    assert op is not None
    resp = await api.get(f"/v1/operations/{op['id']}/wait", params={"timeout": 10})
    done = resp.json()
    assert done["status"] in ("succeeded", "failed", "cancelled"), done
    return done


async def _run(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": name})
    assert resp.status_code == 202, resp.text
    assert (await _done(api, resp.json()["operation"]))["status"] == "succeeded"
    return resp.json()["instance"]


async def _volume(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await api.post("/v1/volumes", json={"size": "1G", **body})
    assert resp.status_code == 202, resp.text
    assert (await _done(api, resp.json()["operation"]))["status"] == "succeeded"
    return (await api.get(f"/v1/volumes/{resp.json()['volume']['id']}")).json()


async def test_create_by_size_with_a_name_and_a_file_system(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    vol = await _volume(api, size="2G", name="data", fs="ext4")
    assert vol["name"] == "data" and vol["size"] == 2 << 30 and vol["state"] == "available"
    assert node.volumes[vol["id"]] == 2 << 30
    assert (await api.get("/v1/volumes/data")).json()["id"] == vol["id"]  # by name
    assert [v["id"] for v in (await api.get("/v1/volumes")).json()] == [vol["id"]]


async def test_bad_sizes_and_names_are_refused_naming_the_field(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    for body, field in (
        ({"size": "1.5G"}, "size"),
        ({"size": "lots"}, "size"),
        ({"size": "1G", "name": "Bad Name"}, "name"),
        ({"size": "1G", "fs": "zfs"}, "fs"),
        ({}, "Size"),
    ):
        resp = await api.post("/v1/volumes", json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["field"] == field, (body, resp.text)
    await _volume(api, name="data")
    resp = await api.post("/v1/volumes", json={"size": "1G", "name": "data"})
    assert resp.status_code == 409 and resp.json()["error"]["field"] == "name"
    assert len(node.volumes) == 1  # nothing half-made


async def test_hot_attach_and_detach_on_a_running_instance(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    inst = await _run(api, "web")
    vol = await _volume(api, name="data")
    resp = await api.post("/v1/volumes/data/attach", json={"instance": "web"})
    assert resp.status_code == 202
    body = resp.json()
    assert body["volume"]["attachment"]["state"] == "attaching"
    assert (await _done(api, body["operation"]))["result"]["hot"] is True
    assert vol["id"] in node.plugged[inst["id"]]
    shown = (await api.get("/v1/volumes/data")).json()
    assert shown["attachment"] == {
        **shown["attachment"],
        "instance_id": inst["id"],
        "instance_name": "web",
        "device": "/dev/vdb",
        "state": "attached",
    }
    resp = await api.post("/v1/volumes/data/detach", json={})
    assert (await _done(api, resp.json()["operation"]))["result"]["how"] == "unplugged"
    assert vol["id"] not in node.plugged[inst["id"]]
    assert (await api.get("/v1/volumes/data")).json()["state"] == "available"


async def test_attach_to_a_stopped_instance_is_recorded_for_its_next_start(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    inst = await _run(api, "web")
    await _done(
        api, (await api.post("/v1/instances/web/stop", json={"force": True})).json()["operation"]
    )
    vol = await _volume(api)
    resp = await api.post(f"/v1/volumes/{vol['id']}/attach", json={"instance": "web"})
    assert resp.json()["operation"] is None  # nothing to wait for
    assert resp.json()["volume"]["attachment"]["state"] == "attached"
    await _done(api, (await api.post("/v1/instances/web/start")).json()["operation"])
    assert [v.id for v in node.specs[inst["id"]].volumes] == [vol["id"]]


async def test_a_volume_attached_elsewhere_is_refused_and_nothing_changes(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    a, _ = await _run(api, "a"), await _run(api, "b")
    await _volume(api, name="data")
    await _done(
        api, (await api.post("/v1/volumes/data/attach", json={"instance": "a"})).json()["operation"]
    )
    resp = await api.post("/v1/volumes/data/attach", json={"instance": "b"})
    assert resp.status_code == 409
    err = resp.json()["error"]
    assert err["code"] == "wrong_state" and "attached to a" in err["message"]
    assert (await api.get("/v1/volumes/data")).json()["attachment"]["instance_id"] == a["id"]
    resp = await api.delete("/v1/volumes/data")
    assert resp.status_code == 409 and "detach it first" in resp.json()["error"]["message"]


async def test_a_guest_that_holds_on_keeps_the_volume_attached_until_forced(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    inst = await _run(api, "web")
    vol = await _volume(api, name="data")
    await _done(
        api,
        (await api.post("/v1/volumes/data/attach", json={"instance": "web"})).json()["operation"],
    )
    node.held.add(vol["id"])
    resp = await api.post("/v1/volumes/data/detach", json={"timeout": 1})
    done = await _done(api, resp.json()["operation"])
    assert done["status"] == "failed" and "did not release" in done["error"]["message"]
    after = (await api.get("/v1/volumes/data")).json()
    assert after["state"] == "in-use" and after["attachment"]["state"] == "attached"
    pid = node.running[inst["id"]]
    resp = await api.post("/v1/volumes/data/detach", json={"force": True, "timeout": 1})
    done = await _done(api, resp.json()["operation"])
    assert done["status"] == "succeeded" and "restarted" in done["result"]["how"]
    assert node.running[inst["id"]] != pid  # the instance came back without the disk
    assert node.specs[inst["id"]].volumes == []
    assert (await api.get("/v1/volumes/data")).json()["state"] == "available"


async def test_delete_on_termination(api: httpx.AsyncClient, node: FakeNode) -> None:
    await _run(api, "web")
    keep, doomed = await _volume(api, name="keep"), await _volume(api, name="doomed")
    for name, flag in (("keep", False), ("doomed", True)):
        resp = await api.post(
            f"/v1/volumes/{name}/attach", json={"instance": "web", "delete_on_termination": flag}
        )
        await _done(api, resp.json()["operation"])
    assert (await api.get("/v1/volumes/doomed")).json()["delete_on_termination"] is True
    await _done(api, (await api.delete("/v1/instances/web")).json()["operation"])
    for _ in range(100):
        if doomed["id"] not in node.volumes:
            break
        import asyncio

        await asyncio.sleep(0.02)
    assert doomed["id"] not in node.volumes and keep["id"] in node.volumes
    assert (await api.get("/v1/volumes/keep")).json()["state"] == "available"
    resp = await api.patch("/v1/volumes/keep", json={"delete_on_termination": True})
    assert resp.json()["delete_on_termination"] is True


async def test_snapshot_of_an_attached_volume_records_the_nodes_answer_and_restores(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    await _run(api, "web")
    vol = await _volume(api, name="data", size="3G")
    await _done(
        api,
        (await api.post("/v1/volumes/data/attach", json={"instance": "web"})).json()["operation"],
    )
    resp = await api.post("/v1/volumes/data/snapshots", json={"description": "nightly"})
    assert resp.status_code == 202
    snap = resp.json()["snapshot"]
    done = await _done(api, resp.json()["operation"])
    # the fake node's answer for an attached volume; the real copy by QEMU while the guest
    # writes is tests/integration/volumes/test_volumes.py
    assert done["result"]["how"] == "live"
    assert node.snapshots[snap["id"]] == vol["id"]
    listed = (await api.get("/v1/snapshots", params={"volume": "data"})).json()
    assert [s["id"] for s in listed] == [snap["id"]] and listed[0]["state"] == "completed"
    resp = await api.post(f"/v1/snapshots/{snap['id']}/restore", json={"name": "copy"})
    await _done(api, resp.json()["operation"])
    copy = (await api.get("/v1/volumes/copy")).json()
    assert copy["snapshot_id"] == snap["id"] and copy["size"] == 3 << 30
    resp = await api.post(f"/v1/snapshots/{snap['id']}/restore", json={"size": "1G"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "Size"
    await _done(api, (await api.delete(f"/v1/snapshots/{snap['id']}")).json())
    assert snap["id"] not in node.snapshots


async def test_a_guest_that_lets_go_later_frees_the_volume_at_the_next_pass(
    api: httpx.AsyncClient, node: FakeNode, ctrl: Controller
) -> None:
    inst = await _run(api, "web")
    vol = await _volume(api, name="data")
    await _done(
        api,
        (await api.post("/v1/volumes/data/attach", json={"instance": "web"})).json()["operation"],
    )
    taken: list[str] = []
    real_try_claim = ctrl.claims.try_claim

    async def counting(key: str, holder: str = "") -> bool:
        taken.append(key)
        return await real_try_claim(key, holder)

    ctrl.claims.try_claim = counting  # type: ignore[method-assign]
    await ctrl.reconciler.reconcile_once()
    assert (await api.get("/v1/volumes/data")).json()["state"] == "in-use"
    assert taken == []  # in sync: the pass took no lock (no claim written)
    node.plugged[inst["id"]].discard(vol["id"])  # the guest released it after all
    await ctrl.reconciler.reconcile_once()
    after = (await api.get("/v1/volumes/data")).json()
    assert after["state"] == "available" and "released by the guest" in after["error"]
    assert taken == [inst["id"]]
