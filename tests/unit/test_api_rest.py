"""The native REST API over the fake-node controller: authentication, validation, error bodies,
202 + operation for mutations, and the key and image endpoints."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest

from corral.controller.service import Controller
from corral.errors import HTTP_STATUS, Code
from corral.node.fake import FakeNode

ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
)


def _error(
    resp: httpx.Response,
    status: int,
    code: str,
    field: str | None = None,
    resource: str | None = None,
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "field", "resource"}
    assert (err["code"], err["field"], err["resource"]) == (code, field, resource)
    assert err["message"]
    return err


async def _done(api: httpx.AsyncClient, op: dict[str, Any]) -> dict[str, Any]:
    resp = await api.get(f"/v1/operations/{op['id']}/wait", params={"timeout": 10})
    assert resp.status_code == 200, resp.text
    done = resp.json()
    assert done["status"] in ("succeeded", "failed", "cancelled"), done
    return done


async def _run(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    resp = await api.post("/v1/instances", json={"image": "tiny", **fields})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert (await _done(api, body["operation"]))["status"] == "succeeded"
    return body["instance"]


# -- authentication ---------------------------------------------------------------------------
async def test_health_needs_no_credentials(anonymous: httpx.AsyncClient) -> None:
    resp = await anonymous.get("/v1/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/instances", "/v1/images", "/v1/keys", "/v1/operations"])
async def test_requests_without_credentials_are_401(
    anonymous: httpx.AsyncClient, path: str
) -> None:
    resp = await anonymous.get(path)
    err = _error(resp, 401, "unauthorized")
    assert "Authorization: Bearer" in err["message"]
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer CKIAAAAAAAAAAAAAAAAA:secret",  # unknown key
        "Bearer {key}:wrong-secret",
        "Bearer {key}",  # no secret
        "Bearer :{secret}",
        "Token {key}:{secret}",  # unknown scheme
        "Basic !!!not-base64!!!",
    ],
)
async def test_requests_with_wrong_credentials_are_401(
    anonymous: httpx.AsyncClient, credentials: tuple[str, str], header: str
) -> None:
    key, secret = credentials
    resp = await anonymous.get(
        "/v1/instances", headers={"Authorization": header.format(key=key, secret=secret)}
    )
    _error(resp, 401, "unauthorized")


async def test_basic_authentication_with_the_same_pair_works(
    anonymous: httpx.AsyncClient, credentials: tuple[str, str]
) -> None:
    token = base64.b64encode(":".join(credentials).encode()).decode()
    resp = await anonymous.get("/v1/instances", headers={"Authorization": f"Basic {token}"})
    assert resp.status_code == 200
    assert resp.json() == []


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "tiny", "cpus": 0}, "cpus"),
        ({"image": "tiny", "cpus": 65}, "cpus"),
        ({"image": "tiny", "colour": "blue"}, "colour"),
        ({"name": "web"}, "image"),
        ({"image": "tiny", "restart_policy": "sometimes"}, "restart_policy"),
        ({"image": "tiny", "stop_timeout": -1}, "stop_timeout"),
        ({"image": "tiny", "keys": "laptop"}, "keys"),
    ],
)
async def test_invalid_run_body_is_400_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    err = _error(await api.post("/v1/instances", json=body), 400, "invalid", field)
    assert err["message"].startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "tiny", "memory": "12"}, "memory"),
        ({"image": "tiny", "memory": "lots"}, "memory"),
        ({"image": "tiny", "name": "Web_1"}, "name"),
        ({"image": "tiny", "disk": "1M"}, "disk"),
        ({"image": "tiny", "address": "192.168.1.1"}, "address"),
    ],
)
async def test_run_refused_by_the_controller_is_400_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    _error(await api.post("/v1/instances", json=body), 400, "invalid", field)
    assert (await api.get("/v1/instances")).json() == []


async def test_body_that_is_not_json_is_400(api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/v1/instances", content=b"{image: tiny", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid"
    assert "JSON" in resp.json()["error"]["message"]


async def test_body_that_is_not_json_names_no_field(api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/v1/instances", content=b"{image: tiny", headers={"Content-Type": "application/json"}
    )
    _error(resp, 400, "invalid", None)


async def test_body_that_is_not_an_object_is_400(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/instances", json=["tiny"])
    _error(resp, 400, "invalid", None)


async def test_stop_body_with_an_unknown_field_is_400(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    resp = await api.post("/v1/instances/web/stop", json={"timeout": 1, "hard": True})
    _error(resp, 400, "invalid", "hard")


async def test_bad_query_parameter_is_400_naming_it(api: httpx.AsyncClient) -> None:
    resp = await api.get("/v1/operations", params={"limit": 0})
    _error(resp, 400, "invalid", "limit")


# -- not found -------------------------------------------------------------------------------
async def test_unknown_instance_is_404_with_the_error_body(api: httpx.AsyncClient) -> None:
    err = _error(await api.get("/v1/instances/ghost"), 404, "not_found", "instance", "instance")
    assert "ghost" in err["message"]


@pytest.mark.parametrize("verb", ["start", "stop", "reboot"])
async def test_requests_on_an_unknown_instance_are_404(api: httpx.AsyncClient, verb: str) -> None:
    resp = await api.post(f"/v1/instances/i-0123456789abcdef0/{verb}")
    _error(resp, 404, "not_found", "instance", "instance")


async def test_delete_of_an_unknown_instance_is_404(api: httpx.AsyncClient) -> None:
    _error(await api.delete("/v1/instances/ghost"), 404, "not_found", "instance", "instance")


async def test_unknown_image_is_404_with_the_error_body(api: httpx.AsyncClient) -> None:
    _error(await api.get("/v1/images/debian"), 404, "not_found", "image", "image")


async def test_run_of_an_unknown_image_is_404_naming_image(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/instances", json={"image": "debian"})
    _error(resp, 404, "not_found", "image", "image")


async def test_unknown_operation_is_404(api: httpx.AsyncClient) -> None:
    resp = await api.get("/v1/operations/op-00000000000000000/wait", params={"timeout": 0})
    _error(resp, 404, "not_found", "operation_id", "operation")


async def test_unknown_path_is_404_with_the_error_body(api: httpx.AsyncClient) -> None:
    _error(await api.get("/v1/nothing-here"), 404, "not_found")


# -- instances --------------------------------------------------------------------------------
async def test_run_is_202_with_an_operation_and_the_pending_instance(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": "web", "memory": "128M"})
    assert resp.status_code == 202
    body = resp.json()
    inst, op = body["instance"], body["operation"]
    assert (inst["name"], inst["state"], inst["state_code"]) == ("web", "pending", 0)
    assert (inst["memory"], inst["private_ip"], inst["image_name"]) == (
        128 << 20,
        "10.88.0.10",
        "tiny",
    )
    assert inst["hostname"] == f"web.{inst['account_id']}.corral.internal"
    assert (op["type"], op["target_kind"], op["target_id"]) == (
        "instance-run",
        "instance",
        inst["id"],
    )
    done = await _done(api, op)
    assert done["status"] == "succeeded"
    assert done["result"]["private_ip"] == "10.88.0.10"
    shown = (await api.get(f"/v1/instances/{inst['id']}")).json()
    assert (shown["state"], shown["state_code"], shown["pid"]) == (
        "running",
        16,
        node.running[inst["id"]],
    )
    assert [i["id"] for i in (await api.get("/v1/instances")).json()] == [inst["id"]]


async def test_duplicate_name_is_409(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": "web"})
    _error(resp, 409, "exists", "name", "instance")


async def test_taken_address_is_409(api: httpx.AsyncClient) -> None:
    await _run(api, name="a", address="10.88.0.20")
    resp = await api.post("/v1/instances", json={"image": "tiny", "address": "10.88.0.20"})
    _error(resp, 409, "exists", "address", "address")


async def test_too_much_memory_is_no_resources_with_the_tables_status(
    api: httpx.AsyncClient,
) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny", "memory": "64G"})
    _error(resp, HTTP_STATUS[Code.NO_RESOURCES], "no_resources", None, "node")


async def test_stop_start_reboot_delete_are_202_with_operations(api: httpx.AsyncClient) -> None:
    inst = await _run(api, name="web")
    for verb, state in (("stop", "stopped"), ("start", "running"), ("reboot", "running")):
        resp = await api.post(f"/v1/instances/web/{verb}")
        assert resp.status_code == 202, resp.text
        op = resp.json()["operation"]
        assert op["type"] == f"instance-{verb}"
        assert (await _done(api, op))["status"] == "succeeded"
        assert (await api.get("/v1/instances/web")).json()["state"] == state
    resp = await api.delete("/v1/instances/web")
    assert resp.status_code == 202
    body = resp.json()
    assert (body["instance"]["state"], body["instance"]["state_code"]) == ("shutting-down", 32)
    assert (await _done(api, body["operation"]))["status"] == "succeeded"
    shown = (await api.get(f"/v1/instances/{inst['id']}")).json()
    assert (shown["state"], shown["state_code"], shown["private_ip"]) == ("terminated", 48, None)
    assert (await api.get("/v1/instances", params={"all": "false"})).json() == []


async def test_stop_with_a_body_passes_timeout_and_force(
    api: httpx.AsyncClient, node: FakeNode
) -> None:
    inst = await _run(api, name="web")
    resp = await api.post("/v1/instances/web/stop", json={"timeout": 3, "force": True})
    assert resp.status_code == 202
    done = await _done(api, resp.json()["operation"])
    assert done["status"] == "succeeded"
    assert inst["id"] not in node.running


async def test_no_op_request_is_202_without_an_operation(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    resp = await api.post("/v1/instances/web/start")
    assert resp.status_code == 202
    assert resp.json()["operation"] is None
    assert resp.json()["instance"]["state"] == "running"


async def test_reboot_of_a_stopped_instance_is_409(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    await _done(api, (await api.post("/v1/instances/web/stop")).json()["operation"])
    err = _error(await api.post("/v1/instances/web/reboot"), 409, "wrong_state", None, "instance")
    assert "start it first" in err["message"]


async def test_failed_run_shows_as_a_failed_operation_with_the_error(
    api: httpx.AsyncClient, node: FakeNode, ctrl: Controller
) -> None:
    class AlwaysFails(set[str]):
        def __contains__(self, item: object) -> bool:
            return True

    node.fail_start = AlwaysFails()
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": "web"})
    assert resp.status_code == 202
    done = await _done(api, resp.json()["operation"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "internal"
    assert "fake launch failure" in done["error"]["message"]
    shown = (await api.get(f"/v1/instances/{done['target_id']}")).json()
    assert shown["state"] == "terminated"
    assert shown["state_reason"].startswith("Server.InternalError")


async def test_console_output_is_plain_text(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    resp = await api.get("/v1/instances/web/console-output")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == "fake console\n"


# -- operations -------------------------------------------------------------------------------
async def test_operation_wait_show_list_and_events(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": "web"})
    op = resp.json()["operation"]
    done = await _done(api, op)
    assert done["id"] == op["id"] and done["progress"] == 1.0
    assert (await api.get(f"/v1/operations/{op['id']}")).json()["status"] == "succeeded"
    listed = (await api.get("/v1/operations", params={"target": op["target_id"]})).json()
    assert [o["id"] for o in listed] == [op["id"]]
    events = (await api.get(f"/v1/operations/{op['id']}/events")).json()
    assert events[0]["kind"] == "started" and events[-1]["kind"] == "succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    later = (
        await api.get(f"/v1/operations/{op['id']}/events", params={"since": len(events) - 1})
    ).json()
    assert [e["kind"] for e in later] == ["succeeded"]


async def test_cancel_of_a_finished_operation_is_409(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny"})
    op = await _done(api, resp.json()["operation"])
    _error(await api.delete(f"/v1/operations/{op['id']}"), 409, "wrong_state", None, "operation")


async def test_wait_with_a_zero_timeout_answers_at_once(
    api: httpx.AsyncClient, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the node holds the start until released: a wait that waited would never answer
    release = asyncio.Event()
    start = node.instance_start

    async def held_start(spec: Any) -> int:
        await release.wait()
        return await start(spec)

    monkeypatch.setattr(node, "instance_start", held_start)
    resp = await api.post("/v1/instances", json={"image": "tiny"})
    op = resp.json()["operation"]
    got = await asyncio.wait_for(
        api.get(f"/v1/operations/{op['id']}/wait", params={"timeout": 0}), 30
    )
    assert got.status_code == 200 and got.json()["status"] in ("pending", "running")
    release.set()
    assert (await _done(api, op))["status"] == "succeeded"


# -- keys -------------------------------------------------------------------------------------
async def test_import_a_key_is_201_without_a_private_key(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/keys", json={"name": "laptop", "public_key": ED25519})
    assert resp.status_code == 201, resp.text
    key = resp.json()
    assert (key["name"], key["key_type"], key["public_key"]) == ("laptop", "ed25519", ED25519)
    assert key["private_key"] is None
    assert key["fingerprint"].endswith("=")
    assert [k["name"] for k in (await api.get("/v1/keys")).json()] == ["laptop"]
    assert (await api.get("/v1/keys/laptop")).json()["fingerprint"] == key["fingerprint"]


@pytest.mark.parametrize(
    ("key_type", "begins"),
    [
        ("ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("rsa", "-----BEGIN RSA PRIVATE KEY-----"),
    ],
)
async def test_create_a_key_pair_returns_the_private_key_once(
    api: httpx.AsyncClient, key_type: str, begins: str
) -> None:
    resp = await api.post("/v1/keys", json={"name": "made", "key_type": key_type})
    assert resp.status_code == 201
    assert resp.json()["private_key"].startswith(begins)
    assert resp.json()["key_type"] == key_type
    shown = (await api.get("/v1/keys/made")).json()
    assert "private_key" not in shown


async def test_duplicate_key_name_is_409(api: httpx.AsyncClient) -> None:
    await api.post("/v1/keys", json={"name": "laptop", "public_key": ED25519})
    resp = await api.post("/v1/keys", json={"name": "laptop"})
    _error(resp, 409, "exists", "name", "key_pair")


async def test_garbage_public_key_is_400(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/keys", json={"name": "bad", "public_key": "ssh-rsa nope"})
    _error(resp, 400, "invalid", "public_key")


async def test_unknown_key_type_is_400_naming_key_type(api: httpx.AsyncClient) -> None:
    _error(
        await api.post("/v1/keys", json={"name": "k", "key_type": "dsa"}),
        400,
        "invalid",
        "key_type",
    )


async def test_bad_key_name_is_400_naming_the_request_field(api: httpx.AsyncClient) -> None:
    _error(await api.post("/v1/keys", json={"name": "tab\there"}), 400, "invalid", "name")


async def test_delete_a_key_is_204_then_404(api: httpx.AsyncClient) -> None:
    await api.post("/v1/keys", json={"name": "laptop", "public_key": ED25519})
    resp = await api.delete("/v1/keys/laptop")
    assert resp.status_code == 204
    assert resp.content == b""
    assert (await api.get("/v1/keys")).json() == []
    _error(await api.delete("/v1/keys/laptop"), 404, "not_found", "name", "key_pair")


async def test_run_with_a_key_pair_records_its_name(api: httpx.AsyncClient) -> None:
    await api.post("/v1/keys", json={"name": "laptop", "public_key": ED25519})
    inst = await _run(api, name="web", keys=["laptop"])
    assert inst["key_name"] == "laptop"


async def test_run_with_an_unknown_key_pair_is_404_naming_keys(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny", "keys": ["nope"]})
    _error(resp, 404, "not_found", "keys", "key_pair")


# -- images and system ------------------------------------------------------------------------
async def test_images_list_shows_the_registered_image(api: httpx.AsyncClient) -> None:
    resp = await api.get("/v1/images")
    assert resp.status_code == 200
    (image,) = resp.json()
    assert (image["name"], image["version"], image["state"]) == ("tiny", "1", "available")
    assert image["public"] is True and image["owner"] is None
    assert image["virtual_size"] == 64 << 20
    shown = (await api.get(f"/v1/images/{image['id']}")).json()
    assert shown == image
    assert (await api.get("/v1/images/tiny:1")).json()["id"] == image["id"]


async def test_image_in_use_cannot_be_removed(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    err = _error(await api.delete("/v1/images/tiny"), 409, "wrong_state", None, "image")
    assert "web" in err["message"]


async def test_unused_image_is_removed(api: httpx.AsyncClient) -> None:
    resp = await api.delete("/v1/images/tiny")
    assert resp.status_code == 200
    assert resp.json()["state"] == "deregistered"
    assert (await api.get("/v1/images")).json() == []


async def test_nodes_list_shows_the_fake_node(api: httpx.AsyncClient) -> None:
    await _run(api, name="web")
    (node,) = (await api.get("/v1/nodes")).json()
    assert (node["name"], node["state"], node["instances"], node["accel"]) == (
        "n1",
        "ready",
        1,
        "tcg",
    )


async def test_shutdown_is_refused_when_the_server_cannot_shut_down(api: httpx.AsyncClient) -> None:
    _error(await api.post("/v1/system/shutdown", json={}), 403, "forbidden")


async def test_openapi_document_is_served(anonymous: httpx.AsyncClient) -> None:
    spec = (await anonymous.get("/openapi.json")).json()
    assert "/v1/instances" in spec["paths"]
    assert spec["info"]["title"] == "Corral"
