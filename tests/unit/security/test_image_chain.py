"""Issue 9 §1, the chain from any account to root on the host, link by link and whole:
images belong to the account that made them (private unless shared; public only by an admin)
and a name never resolves to another account's private image; every image field is checked;
`corral ssh` ends its options before the destination and refuses a user name that is not one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from corral.cli.instances import ssh_argv
from corral.controller import images as images_mod
from corral.controller.service import Controller
from corral.errors import Forbidden, Invalid, NotFound
from corral.images.manifest import Manifest
from tests.unit.helpers import admin, finish, req
from tests.unit.images.fakes import add_base
from tests.unit.security.conftest import Tenant

HOSTILE = "-oProxyCommand=touch /tmp/corral-pwned"
TenantFactory = Callable[[str], AbstractAsyncContextManager[Tenant]]


async def _op(ctrl: Controller, resp: httpx.Response) -> Any:
    assert resp.status_code == 202, resp.text
    return await finish(ctrl, await ctrl.ops.get(resp.json()["operation"]["id"]))


async def _archive_of(api: httpx.AsyncClient, ctrl: Controller, ref: str) -> bytes:
    """An export archive of ``ref`` (made by the admin), and ``ref`` removed again."""
    op = await _op(ctrl, await api.post(f"/v1/images/{ref}/export", json={}))
    assert op.status == "succeeded", op.error
    data = (await api.get(f"/v1/images/exports/{op.result['archive']}")).content
    assert (await api.delete(f"/v1/images/{ref}")).status_code == 200
    return data


# -- link 1: ownership -------------------------------------------------------------------
async def test_an_image_a_tenant_imports_is_its_own_and_private(
    api: httpx.AsyncClient, ctrl: Controller, tenant: TenantFactory, tmp_path: Path
) -> None:
    add_base(ctrl.image_store, tmp_path / "w", name="web", version="1")
    await ctrl.images.sync_from_store()
    data = await _archive_of(api, ctrl, "web:1")
    async with tenant("bob") as (bob, bob_api), tenant("carol") as (_, carol_api):
        op = await _op(ctrl, await bob_api.post("/v1/images/import", content=data))
        assert op.status == "succeeded", op.error
        mine = (await bob_api.get(f"/v1/images/{op.result['image_id']}")).json()
        assert mine["owner"] == bob.account_id and mine["public"] is False
        # nobody else sees it, by id or by name, nor launches it
        for other in (api, carol_api):
            assert (await other.get(f"/v1/images/{op.result['image_id']}")).status_code == 404
            assert (await other.get("/v1/images/web")).status_code == 404
            assert op.result["image_id"] not in {
                i["id"] for i in (await other.get("/v1/images")).json()
            }
        resp = await carol_api.post("/v1/instances", json={"image": "web", "name": "x"})
        assert resp.status_code == 404 and resp.json()["error"]["field"] == "image"


async def test_a_name_resolves_to_the_callers_own_image_then_public_never_anothers_private(
    ctrl: Controller, tenant: TenantFactory, tmp_path: Path
) -> None:
    builtin = await ctrl.images.get(admin(ctrl), "tiny")
    assert builtin.public and builtin.account_id is None
    async with tenant("bob") as (bob, _), tenant("alice") as (alice, _):
        # bob makes a newer "tiny" of his own (as an import or a build registers it)
        m = add_base(ctrl.image_store, tmp_path / "w", name="tiny", version="9", salt=b"bob")
        bobs = await ctrl.images.register(m, bob.account_id)
        assert not bobs.public and bobs.account_id == bob.account_id
        assert (await ctrl.images.get(bob, "tiny")).id == bobs.id  # his own first
        for caller in (alice, admin(ctrl)):
            assert (await ctrl.images.get(caller, "tiny")).id == builtin.id
            with pytest.raises(NotFound):
                await ctrl.images.get(caller, "tiny:9")
            with pytest.raises(NotFound):
                await ctrl.images.get(caller, bobs.id)
        inst, op = await ctrl.instances.run(alice, req(name="web"))
        assert inst.image_id == builtin.id
        await finish(ctrl, op)
        # shared with alice: she may launch it by id, but her names still mean the public one
        await ctrl.image_publishing.modify_launch_permissions(
            bob, bobs.id, [alice.account_id], [], None
        )
        assert (await ctrl.images.get(alice, bobs.id)).id == bobs.id
        assert (await ctrl.images.get(alice, "tiny")).id == builtin.id
        # only an admin makes an image public
        with pytest.raises(Forbidden):
            await ctrl.image_publishing.modify_launch_permissions(bob, bobs.id, [], [], True)
        assert not (await ctrl.images.get(bob, bobs.id)).public


async def test_a_tenants_build_of_a_builtin_recipe_is_its_own_and_an_admins_is_public(
    ctrl: Controller, tenant: TenantFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ownership a build gives (the builder itself runs in the integration tests)."""
    made = add_base(ctrl.image_store, tmp_path / "w", name="tiny", version="7", salt=b"b")
    monkeypatch.setitem(images_mod.BUILDERS, "busybox", lambda *a: made.digest)
    async with tenant("bob") as (bob, bob_api):
        op = await _op(ctrl, await bob_api.post("/v1/images/build", json={"recipe": "tiny"}))
        assert op.status == "succeeded", op.error
        row = await ctrl.images.get(bob, op.result["image_id"])
        assert row.account_id == bob.account_id and not row.public
        with pytest.raises(NotFound):
            await ctrl.images.get(admin(ctrl), op.result["image_id"])
    done = await finish(ctrl, await ctrl.images.build(admin(ctrl), "tiny"))
    row = await ctrl.images.get(admin(ctrl), done.result["image_id"])
    assert row.account_id is None and row.public


async def test_a_tenants_tag_of_a_public_image_is_its_own(
    ctrl: Controller, tenant: TenantFactory
) -> None:
    async with tenant("bob") as (bob, _), tenant("alice") as (alice, _):
        tagged = await ctrl.images.tag(bob, "tiny", "base", "1")
        assert tagged.account_id == bob.account_id and not tagged.public
        with pytest.raises(NotFound):
            await ctrl.images.get(alice, "base")


# -- link 2: every image field is checked ------------------------------------------------
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"name": "web", "default_user": HOSTILE}, "default_user"),
        ({"name": "web", "default_user": "Root"}, "default_user"),
        ({"name": "web", "default_user": "root\n"}, "default_user"),
        ({"name": "web", "default_user": "a" * 33}, "default_user"),
        ({"name": "-web"}, "name"),
        ({"name": "web:2"}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": "web", "version": "-1"}, "version"),
        ({"name": "web", "description": "a\x00b"}, "description"),
        ({"name": "web", "description": "\ufffe"}, "description"),
        ({"name": "web", "description": "d" * 2001}, "description"),
    ],
)
async def test_an_import_with_a_bad_image_field_is_400_before_anything_is_received(
    api: httpx.AsyncClient, ctrl: Controller, params: dict[str, str], field: str
) -> None:
    resp = await api.post("/v1/images/import", content=b"\0" * 4096, params=params)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["field"] == field
    assert list(ctrl.image_store.tmp.iterdir()) == []


def test_a_manifest_from_any_source_refuses_a_user_name_that_is_an_option() -> None:
    m = Manifest.model_validate_json(
        '{"name": "x", "root_disk": {"sha256": "0", "size": 1}, "default_user": "root"}'
    )
    bad = m.model_dump(mode="json") | {"default_user": HOSTILE}
    with pytest.raises(Invalid) as err:
        Manifest.model_validate(bad)
    assert err.value.field == "default_user"


# -- link 3: argv ends options before operands -------------------------------------------
def _parsed(argv: list[str]) -> dict[str, str]:
    """What ssh makes of ``argv`` (``ssh -G`` prints the configuration, connects nowhere)."""
    assert argv[0] == "ssh"
    out = subprocess.run(
        ["ssh", "-G", "-F", "/dev/null", *argv[1:]], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def test_ssh_argv_ends_options_before_the_destination(tmp_path: Path) -> None:
    argv = ssh_argv("corral tunnel i-1 22", "debian", tmp_path / "k", "i-1", None, True, ["id"])
    assert argv[-5:] == ["-l", "debian", "--", "i-1", "id"]
    conf = _parsed(argv[:-1])
    assert conf["user"] == "debian" and conf["proxycommand"] == "corral tunnel i-1 22"


def test_ssh_argv_refuses_a_user_that_would_be_an_option(tmp_path: Path) -> None:
    for user in (HOSTILE, "-l", "root@evil", "a b", "root\n", ""):
        with pytest.raises(typer.Exit):
            ssh_argv("corral tunnel i-1 22", user, tmp_path / "k", "i-1", None, True, [])


def test_after_the_double_dash_an_option_like_operand_is_only_a_name() -> None:
    """Why ``--`` matters: the same word before it sets ProxyCommand, after it does not."""
    before = subprocess.run(
        ["ssh", "-G", "-F", "/dev/null", HOSTILE, "h"], capture_output=True, text=True, timeout=30
    )
    assert "proxycommand touch /tmp/corral-pwned" in before.stdout
    after = subprocess.run(
        ["ssh", "-G", "-F", "/dev/null", "--", HOSTILE], capture_output=True, text=True, timeout=30
    )
    assert "proxycommand" not in after.stdout  # a host name, and ssh refuses it as one
    assert after.returncode != 0 and "invalid characters" in after.stderr


# -- the chain ---------------------------------------------------------------------------
async def test_the_chain_from_a_tenant_to_a_command_on_the_host_is_broken_at_every_link(
    api: httpx.AsyncClient, ctrl: Controller, tenant: TenantFactory, tmp_path: Path
) -> None:
    builtin = await ctrl.images.get(admin(ctrl), "tiny")
    async with tenant("mallory") as (mallory, m_api), tenant("alice") as (alice, _):
        # 1. mallory cannot give an image a user name that is an ssh option
        resp = await m_api.post(
            "/v1/images/import",
            content=b"\0" * 4096,
            params={"name": "tiny", "version": "99", "default_user": HOSTILE},
        )
        assert resp.status_code == 400 and resp.json()["error"]["field"] == "default_user"
        # 2. her newer "tiny" (even one that got a hostile user past an older Corral) is hers
        m = add_base(ctrl.image_store, tmp_path / "w", name="tiny", version="99", salt=b"m")
        planted = await ctrl.images.register(m, mallory.account_id)
        async with ctrl.store.write() as s:
            row = await s.get(type(planted), planted.id)
            assert row is not None
            row.default_user = HOSTILE
        inst, op = await ctrl.instances.run(alice, req(name="victim"))
        await finish(ctrl, op)
        assert inst.image_id == builtin.id
        # 3. and were a hostile user ever handed to `corral ssh`, it is refused, not run
        with pytest.raises(typer.Exit):
            ssh_argv("corral tunnel x 22", HOSTILE, tmp_path / "k", inst.id, None, True, [])
    assert not Path("/tmp/corral-pwned").exists()


async def test_rest_shares_an_image_through_the_same_launch_permissions_as_ec2(
    api: httpx.AsyncClient, ctrl: Controller, tenant: TenantFactory, tmp_path: Path
) -> None:
    async with tenant("bob") as (bob, bob_api), tenant("alice") as (alice, alice_api):
        m = add_base(ctrl.image_store, tmp_path / "w", name="web", version="1", salt=b"s")
        row = await ctrl.images.register(m, bob.account_id)
        assert (await alice_api.get(f"/v1/images/{row.id}")).status_code == 404
        resp = await bob_api.patch(
            f"/v1/images/{row.id}/permissions", json={"add": [alice.account_id]}
        )
        assert resp.json() == {"public": False, "accounts": [alice.account_id]}
        assert (await alice_api.get(f"/v1/images/{row.id}")).status_code == 200
        assert (await alice_api.get("/v1/images/web")).status_code == 404  # by id only
        # EC2 sees the same permission
        public, users = await ctrl.image_publishing.launch_permissions(bob, row.id)
        assert (public, users) == (False, [alice.account_id])
        # only its owner may change it; only an admin makes it public
        resp = await alice_api.patch(f"/v1/images/{row.id}/permissions", json={"remove": []})
        assert resp.status_code == 400
        resp = await bob_api.patch(f"/v1/images/{row.id}/permissions", json={"public": True})
        assert resp.status_code == 403
        resp = await bob_api.patch(
            f"/v1/images/{row.id}/permissions", json={"remove": [alice.account_id]}
        )
        assert resp.json()["accounts"] == []
        assert (await alice_api.get(f"/v1/images/{row.id}")).status_code == 404
