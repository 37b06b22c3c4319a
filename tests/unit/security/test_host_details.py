"""Issue 9 §2: a non-admin account learns nothing of the host (paths, namespace, nodes) and
nothing of other accounts' instances (an image's refusal to go counts them, never names them);
a build never reads a server path, so it cannot tell which files exist there."""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx

from corral.controller.service import Controller
from corral.images import recipe_upload
from tests.unit.helpers import admin, finish, req
from tests.unit.security.conftest import Tenant

TenantFactory = Callable[[str], AbstractAsyncContextManager[Tenant]]


async def test_a_tenant_sees_no_host_details(
    api: httpx.AsyncClient, ctrl: Controller, tenant: TenantFactory
) -> None:
    state = str(ctrl.settings.state_dir)
    full = (await api.get("/v1/system")).json()
    assert full["state_dir"] == state and full["node"]
    async with tenant("bob") as (_, bob_api):
        resp = await bob_api.get("/v1/system")
        assert resp.status_code == 200
        assert state not in resp.text and ctrl.settings.namespace not in resp.text
        assert resp.json()["node"] == {} and resp.json()["checks"] == []
        nodes = await bob_api.get("/v1/nodes")
        assert nodes.status_code == 403 and state not in nodes.text
    assert (await api.get("/v1/nodes")).status_code == 200


async def test_an_image_in_use_names_only_the_callers_own_instances(
    api: httpx.AsyncClient, ctrl: Controller, tenant: TenantFactory, tmp_path: Path
) -> None:
    async with tenant("bob") as (bob, bob_api):
        tagged = await ctrl.images.tag(bob, "tiny", "mine", "1")
        await ctrl.image_publishing.modify_launch_permissions(
            bob,
            tagged.id,
            [admin(ctrl).account_id],
            [],
            None,  # type: ignore[union-attr]
        )
        _, op = await ctrl.instances.run(bob, req(name="bob-secret-web", image="mine"))
        await finish(ctrl, op)
        _, op = await ctrl.instances.run(
            admin(ctrl),
            req(name="admin-box", image=tagged.id),
        )
        await finish(ctrl, op)
        resp = await bob_api.delete("/v1/images/mine")
        assert resp.status_code == 409
        msg = resp.json()["error"]["message"]
        assert "bob-secret-web" in msg and "admin-box" not in msg
        assert "1 instance(s) of other accounts" in msg


async def test_a_build_takes_no_server_path_so_it_tells_nothing_of_the_hosts_files(
    api: httpx.AsyncClient, tenant: TenantFactory
) -> None:
    async with tenant("bob") as (_, bob_api):
        answers = []
        for path in ("/etc/passwd", "/etc/no-such-file", "/root", "../../etc"):
            resp = await bob_api.post("/v1/images/build", json={"recipe": path})
            answers.append((resp.status_code, resp.json()["error"]["code"]))
        assert set(answers) == {(400, "invalid")}, answers
        resp = await bob_api.post("/v1/images/build", json={"recipe": "no-such-recipe"})
        assert resp.status_code == 404 and "built-in recipe" in resp.text


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in entries:
            content = data.get(info.name)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return base64.b64encode(buf.getvalue()).decode()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


async def test_an_uploaded_recipe_with_a_link_or_a_way_out_is_refused(
    tenant: TenantFactory, ctrl: Controller
) -> None:
    recipe = b'name = "web"\nkind = "busybox"\n'
    link = tarfile.TarInfo("rootfs/etc")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    hard = tarfile.TarInfo("init")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/shadow"
    cases = {
        "symlink": _tar([_file("recipe.toml"), link], {"recipe.toml": recipe}),
        "hardlink": _tar([_file("recipe.toml"), hard], {"recipe.toml": recipe}),
        "dotdot": _tar(
            [_file("recipe.toml"), _file("../../x")], {"recipe.toml": recipe, "../../x": b"x"}
        ),
        "absolute": _tar(
            [_file("recipe.toml"), _file("/tmp/x")], {"recipe.toml": recipe, "/tmp/x": b"x"}
        ),
    }
    async with tenant("bob") as (_, bob_api):
        for what, archive in cases.items():
            resp = await bob_api.post("/v1/images/build", json={"archive": archive})
            assert resp.status_code == 400, (what, resp.text)
            assert resp.json()["error"]["field"] == "archive", what
    assert not Path("/tmp/x").exists() or Path("/tmp/x").read_bytes() != b"x"
    assert not list((ctrl.settings.state_dir / "recipes").glob("*"))


async def test_an_uploaded_recipe_may_not_take_a_builtin_name_or_another_mirror(
    tenant: TenantFactory, ctrl: Controller, tmp_path: Path
) -> None:
    async with tenant("bob") as (_, bob_api):
        for text, field in (
            ('name = "tiny"\nkind = "busybox"\n', "name"),
            ('name = "web"\nkind = "debian"\nmirror = "http://198.51.100.1/debian"\n', "mirror"),
        ):
            d = tmp_path / field
            d.mkdir()
            (d / "recipe.toml").write_text(text)
            resp = await bob_api.post("/v1/images/build", json={"archive": recipe_upload.pack(d)})
            assert resp.status_code in (400, 403) and resp.json()["error"]["field"] == field
    assert not list((ctrl.settings.state_dir / "recipes").glob("*"))
