"""REST answers that used to be 500s, text that would break EC2 answers, and a spec that says
what the server answers (400 for invalid input, never FastAPI's 422)."""

from __future__ import annotations

import httpx
import pytest

from corral.api.openapi import spec


def _invalid(resp: httpx.Response, field: str) -> str:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["field"]) == ("invalid", field), err
    return str(err["message"])


async def _op_id(api: httpx.AsyncClient) -> str:
    resp = await api.post("/v1/keys", json={"name": "k"})
    assert resp.status_code == 201, resp.text
    resp = await api.post("/v1/volumes", json={"size": "1G", "name": "v"})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["operation"]["id"])


@pytest.mark.parametrize("since", [2**63, -(2**63) - 1, 10**30])
async def test_operation_events_since_past_64_bits_is_400(
    api: httpx.AsyncClient, since: int
) -> None:
    op = await _op_id(api)
    _invalid(await api.get(f"/v1/operations/{op}/events", params={"since": since}), "since")
    resp = await api.get(f"/v1/operations/{op}/wait", params={"since": since, "timeout": 0})
    _invalid(resp, "since")
    ok = await api.get(f"/v1/operations/{op}/events", params={"since": 2**63 - 1})
    assert ok.status_code == 200 and ok.json() == []


@pytest.mark.parametrize("check", ["65536", "99999", "0", "70000/health"])
async def test_replace_with_a_port_past_65535_is_400_naming_check(
    api: httpx.AsyncClient, check: str
) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": "web"})
    assert resp.status_code == 202
    resp = await api.post("/v1/instances/web/replace", json={"image": "tiny", "check": check})
    assert "1-65535" in _invalid(resp, "check")


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "1e309"])
async def test_terminate_timeout_must_be_a_number_of_seconds(
    api: httpx.AsyncClient, timeout: str
) -> None:
    resp = await api.post("/v1/instances", json={"image": "tiny", "name": "web"})
    assert resp.status_code == 202
    _invalid(await api.delete("/v1/instances/web", params={"timeout": timeout}), "timeout")


async def test_recipe_name_too_long_for_a_path_is_refused_naming_it(
    api: httpx.AsyncClient,
) -> None:
    for recipe in ("a" * 5000, "bad\x00name"):
        resp = await api.post("/v1/images/build", json={"recipe": recipe})
        assert resp.status_code == 400, resp.text  # a recipe is a built-in name, never a path
        assert resp.json()["error"]["field"] == "recipe"


# -- characters XML 1.0 forbids never reach an EC2 answer -----------------------------------
BAD = ["a\ufffeb", "a\x01b", "\x00", "a\uffff"]


@pytest.mark.parametrize("bad", BAD)
async def test_names_and_descriptions_with_xml_forbidden_characters_are_400(
    api: httpx.AsyncClient, bad: str
) -> None:
    assert "XML 1.0" in _invalid(await api.post("/v1/keys", json={"name": bad}), "name")
    _invalid(await api.post("/v1/instances", json={"image": "tiny", "name": bad}), "name")
    _invalid(await api.post("/v1/volumes", json={"size": "1G", "name": bad}), "name")
    resp = await api.post("/v1/volumes", json={"size": "1G", "name": "v1"})
    assert resp.status_code == 202
    resp = await api.post("/v1/volumes/v1/snapshots", json={"description": bad})
    _invalid(resp, "description")
    _invalid(await api.patch("/v1/volumes/v1", json={"name": bad}), "name")
    _invalid(await api.post("/v1/accounts", json={"name": bad}), "name")


async def test_tabs_and_newlines_stay_allowed(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/volumes", json={"size": "1G", "name": "v1"})
    assert resp.status_code == 202
    op = resp.json()["operation"]["id"]
    assert (await api.get(f"/v1/operations/{op}/wait")).json()["status"] == "succeeded"
    resp = await api.post("/v1/volumes/v1/snapshots", json={"description": "two\tlines\nok"})
    assert resp.status_code == 202, resp.text


async def test_image_import_text_is_checked_before_the_upload_is_read(
    api: httpx.AsyncClient,
) -> None:
    pulled = 0

    async def body() -> object:
        nonlocal pulled
        for _ in range(4):
            pulled += 1
            yield b"x" * 65536

    resp = await api.post(
        "/v1/images/import",
        params={"name": "img", "description": "bad\ufffe"},
        content=body(),  # type: ignore[arg-type]
        headers={"content-type": "application/octet-stream"},
    )
    _invalid(resp, "description")
    assert pulled <= 1  # httpx may start the stream; the server read none of it


# -- the spec says what the server answers --------------------------------------------------
def test_spec_documents_the_errors_the_server_gives_and_never_422() -> None:
    paths = spec()["paths"]
    for path, methods in paths.items():
        for method, op in methods.items():
            codes = set(op["responses"])
            assert "422" not in codes, (method, path)
            assert {"400", "401", "403", "404", "409"} <= codes, (method, path, codes)
            if "requestBody" in op and path != "/v1/images/import":
                assert "413" in codes, (method, path)
    assert "HTTPValidationError" not in spec()["components"]["schemas"]
