"""The image endpoints over the fake-node controller: manifests, export and download, delta
import, verify, tags, and the refusals (wrong base, wrong sha256, a base in use)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx

from corral.controller.service import Controller
from corral.images import recipe_upload
from corral.images.manifest import Manifest
from tests.unit.helpers import finish
from tests.unit.images.fakes import add_base, add_derived


async def _images(ctrl: Controller, tmp_path: Path) -> tuple[Manifest, Manifest]:
    base = add_base(ctrl.image_store, tmp_path / "w")
    tools = add_derived(ctrl.image_store, tmp_path / "w", base)
    await ctrl.images.sync_from_store()
    return base, tools


async def _op(ctrl: Controller, resp: httpx.Response) -> Any:
    assert resp.status_code == 202, resp.text
    return await finish(ctrl, await ctrl.ops.get(resp.json()["operation"]["id"]))


async def test_images_list_their_base_and_show_their_manifest(
    api: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    base, tools = await _images(ctrl, tmp_path)
    rows = {f"{r['name']}:{r['version']}": r for r in (await api.get("/v1/images")).json()}
    assert rows["tools:12.1"]["base"] == base.digest and rows["debian:12"]["base"] is None
    m = (await api.get("/v1/images/tools:12.1/manifest")).json()
    assert m["base"] == base.digest and m["root_disk"]["sha256"] == tools.root_disk.sha256


async def test_export_a_delta_download_it_and_import_it_back(
    api: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    base, tools = await _images(ctrl, tmp_path)
    op = await _op(
        ctrl, await api.post("/v1/images/tools:12.1/export", json={"delta_from": "debian:12"})
    )
    assert op.status == "succeeded", op.error
    assert op.result["delta_from"] == base.digest
    resp = await api.get(f"/v1/images/exports/{op.result['archive']}")
    assert resp.status_code == 200
    assert (
        hashlib.sha256(resp.content).hexdigest()
        == resp.headers["x-corral-sha256"]
        == op.result["sha256"]
    )
    assert (await api.delete("/v1/images/tools:12.1")).status_code == 200
    assert not ctrl.image_store.has(tools.digest)
    op = await _op(
        ctrl,
        await api.post(
            "/v1/images/import",
            content=resp.content,
            params={"sha256": op.result["sha256"]},
            headers={"Content-Type": "application/octet-stream"},
        ),
    )
    assert op.status == "succeeded", op.error
    assert op.result["digest"] == tools.digest and op.result["name"] == "tools"
    assert (await api.get("/v1/images/tools:12.1")).json()["state"] == "available"
    assert list(ctrl.image_store.tmp.iterdir()) == []


async def test_export_against_a_base_that_is_not_the_images_is_400(
    api: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    await _images(ctrl, tmp_path)
    resp = await api.post("/v1/images/tools:12.1/export", json={"delta_from": "tiny"})
    assert resp.status_code == 400
    assert resp.json()["error"]["field"] == "delta_from"
    assert list(ctrl.image_store.exports.iterdir()) == []
    resp = await api.post("/v1/images/tools:12.1/export", json={"delta_from": "nope"})
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "delta_from"


async def test_an_upload_with_the_wrong_sha256_is_400_and_leaves_nothing(
    api: httpx.AsyncClient, ctrl: Controller
) -> None:
    resp = await api.post(
        "/v1/images/import", content=b"x" * 4096, params={"name": "x", "sha256": "0" * 64}
    )
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "sha256"
    assert list(ctrl.image_store.tmp.iterdir()) == []


async def test_a_disk_upload_needs_a_name(api: httpx.AsyncClient, ctrl: Controller) -> None:
    resp = await api.post("/v1/images/import", content=b"\0" * 4096)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "name"
    assert list(ctrl.image_store.tmp.iterdir()) == []


async def test_an_empty_upload_is_400(api: httpx.AsyncClient, ctrl: Controller) -> None:
    resp = await api.post("/v1/images/import", content=b"", params={"name": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "file"


async def test_a_disk_upload_under_a_taken_name_is_409(
    api: httpx.AsyncClient, ctrl: Controller
) -> None:
    resp = await api.post(
        "/v1/images/import", content=b"\0" * 4096, params={"name": "tiny", "version": "1"}
    )
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "exists"
    assert list(ctrl.image_store.tmp.iterdir()) == []


async def test_a_base_in_use_by_another_image_cannot_be_removed(
    api: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    await _images(ctrl, tmp_path)
    resp = await api.delete("/v1/images/debian:12")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "wrong_state"
    assert "tools:12.1" in resp.json()["error"]["message"]
    assert (await api.get("/v1/images/debian:12")).json()["state"] == "available"


async def test_verify_succeeds_then_fails_on_a_corrupt_part(
    api: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    base, _ = await _images(ctrl, tmp_path)
    op = await _op(ctrl, await api.post("/v1/images/tools:12.1/verify"))
    assert op.status == "succeeded" and op.result["images"] == 2
    kernel = ctrl.image_store.blob_path(base.kernel.sha256)  # type: ignore[union-attr]
    os.chmod(kernel, 0o644)
    kernel.write_bytes(b"bit rot")
    op = await _op(ctrl, await api.post("/v1/images/tools:12.1/verify"))
    assert op.status == "failed" and op.error["code"] == "invalid"
    assert "corrupt" in op.error["message"]


async def test_a_tag_is_another_name_for_the_same_image(
    api: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    base, _ = await _images(ctrl, tmp_path)
    resp = await api.post("/v1/images/debian:12/tags", json={"name": "stable", "version": "1"})
    assert resp.status_code == 201
    tagged = resp.json()
    assert tagged["digest"] == base.digest and tagged["name"] == "stable"
    again = await api.post("/v1/images/debian:12/tags", json={"name": "stable", "version": "1"})
    assert again.json()["id"] == tagged["id"]
    taken = await api.post("/v1/images/tiny/tags", json={"name": "stable", "version": "1"})
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "version"
    bad = await api.post("/v1/images/tiny/tags", json={"name": "No Spaces"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "name"
    # removing the tag keeps the image
    assert (await api.delete("/v1/images/stable:1")).status_code == 200
    assert ctrl.image_store.has(base.digest)


async def test_downloading_an_unknown_export_is_404(api: httpx.AsyncClient) -> None:
    resp = await api.get(f"/v1/images/exports/{'a' * 64}.tar")
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "archive"


async def test_building_on_a_base_that_is_not_there_is_404_naming_base(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    recipe = tmp_path / "web"
    recipe.mkdir()
    (recipe / "recipe.toml").write_text('name = "web"\nkind = "debian"\nbase = "nope:1"\n')
    resp = await api.post("/v1/images/build", json={"archive": recipe_upload.pack(recipe)})
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["field"] == "base" and "build or import nope:1 first" in err["message"]


async def test_a_bad_recipe_is_400_naming_the_key(api: httpx.AsyncClient, tmp_path: Path) -> None:
    recipe = tmp_path / "web"
    recipe.mkdir()
    (recipe / "recipe.toml").write_text('name = "web"\nkind = "debian"\nsize = "2G"\n')
    resp = await api.post("/v1/images/build", json={"archive": recipe_upload.pack(recipe)})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "size"
