"""Issue 9 §2 and §3: access-key secrets are stored sealed (a copy of the database hands out
none), keys made before are sealed at start, a non-admin account holds a bounded number of
keys (a clear 409 past it, and keys can be deleted), and the migration gives images a non-admin
made back to that account."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config

from corral.controller.accounts import Accounts
from corral.controller.secrets_box import SecretBox
from corral.controller.service import Controller
from corral.errors import Unauthorized
from corral.store import Store
from corral.store.db import MIGRATIONS
from tests.unit.security.conftest import Tenant

TenantFactory = Callable[[str], AbstractAsyncContextManager[Tenant]]


def _files(db: Path) -> bytes:
    """Every byte of an SQLite database as a copy of it would hold (the file and its WAL)."""
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


async def test_a_copy_of_the_database_holds_no_secret(ctrl: Controller, tmp_path: Path) -> None:
    acct = await ctrl.accounts.create("bob")
    key = await ctrl.accounts.create_key(acct.id)
    db = Path(ctrl.store.url.split("///", 1)[1])
    stored = {r[0]: r[1] for r in _rows(db, "SELECT id, secret FROM access_keys")}
    assert key.secret.encode() not in _files(db)
    assert stored[key.id] != key.secret and str(stored[key.id]).startswith("v1:")
    assert (await ctrl.accounts.authenticate(key.id, key.secret)).account_id == acct.id
    # the key file is the state directory's, 0600
    keyfile = ctrl.settings.state_dir / "secrets.key"
    assert keyfile.stat().st_mode & 0o777 == 0o600
    # the database with another key file: nothing opens
    other = Accounts(ctrl.store, SecretBox.from_file(tmp_path / "another.key"))
    with pytest.raises(Unauthorized):
        await other.authenticate(key.id, key.secret)


def test_a_sealed_secret_opens_only_for_its_own_key_id() -> None:
    box = SecretBox(b"k" * 32)
    sealed = box.seal("AKIA1", "s3cret")
    assert box.open("AKIA1", sealed) == "s3cret"
    assert box.open("AKIA2", sealed) is None  # moved to another row: refused
    assert SecretBox(b"j" * 32).open("AKIA1", sealed) is None


async def test_a_non_admin_account_holds_two_keys_then_gets_a_clear_409(
    api: httpx.AsyncClient, ctrl: Controller, tenant: TenantFactory
) -> None:
    async with tenant("bob") as (bob, bob_api):
        second = await bob_api.post("/v1/accounts/keys")
        assert second.status_code == 201
        third = await bob_api.post("/v1/accounts/keys")
        assert third.status_code == 409, third.text
        err = third.json()["error"]
        assert err["field"] == "access_key" and "delete one first" in err["message"]
        # not through an admin either
        assert (await api.post("/v1/accounts/keys", params={"account": "bob"})).status_code == 409
        # a key deleted makes room; a key cannot delete itself
        assert (await bob_api.delete(f"/v1/accounts/keys/{bob.access_key_id}")).status_code == 403
        kid = second.json()["access_key_id"]
        assert (await bob_api.delete(f"/v1/accounts/keys/{kid}")).status_code == 204
        assert (await bob_api.post("/v1/accounts/keys")).status_code == 201
        async with tenant("carol") as (_, carol_api):
            # another account's key is not there for carol
            assert (await carol_api.delete(f"/v1/accounts/keys/{kid}")).status_code == 404
    # the admin account is not limited
    for _ in range(3):
        assert (await api.post("/v1/accounts/keys")).status_code == 201


async def test_the_migration_returns_tenant_images_and_keys_made_before_are_sealed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{db}")
    command.upgrade(cfg, "0003")
    now = "2026-12-01 00:00:00"
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO accounts (id, name, admin, created_at) VALUES (?, ?, ?, ?)",
            [("000000000001", "admin", 1, now), ("000000000002", "bob", 0, now)],
        )
        conn.execute(
            "INSERT INTO access_keys (id, account_id, secret, description, active, created_at) "
            "VALUES ('AKIAOLD', '000000000002', 'clear-secret', '', 1, ?)",
            (now,),
        )
        for iid, name in (("ami-00000000000000001", "bobs"), ("ami-00000000000000002", "tiny")):
            conn.execute(
                "INSERT INTO images (id, account_id, name, version, digest, state, public, arch, "
                "kind, description, default_user, size, virtual_size, created_at, "
                "root_device_type) VALUES (?, NULL, ?, '1', 'd', 'available', 1, 'x86_64', "
                "'imported', '', 'root', 0, 0, ?, 'instance-store')",
                (iid, name, now),
            )
        ops = [
            ("op-1", "000000000002", "image-import", '{"image_id": "ami-00000000000000001"}'),
            ("op-2", "000000000001", "image-build", '{"image_id": "ami-00000000000000002"}'),
            ("op-3", "000000000002", "image-build", '{"image_id": "ami-00000000000000002"}'),
        ]
        for oid, acct, kind, result in ops:
            conn.execute(
                "INSERT INTO operations (id, account_id, type, status, target_kind, target_id, "
                "params, result, progress, message, seq, requested_by, attempts, created_at) "
                "VALUES (?, ?, ?, 'succeeded', 'image', 'x', '{}', ?, 1, '', 0, '', 0, ?)",
                (oid, acct, kind, result, now),
            )
    store = Store(f"sqlite+aiosqlite:///{db}")
    store.migrate()
    images = {r[0]: (r[1], r[2]) for r in _rows(db, "SELECT id, account_id, public FROM images")}
    assert images["ami-00000000000000001"] == ("000000000002", 0)  # bob's import: his, private
    assert images["ami-00000000000000002"] == (None, 1)  # the admin built it too: built-in
    accounts = Accounts(store, SecretBox.from_file(tmp_path / "secrets.key"))
    assert await accounts.seal_stored() == 1
    assert await accounts.seal_stored() == 0
    assert b"clear-secret" not in _files(db)
    assert (await accounts.authenticate("AKIAOLD", "clear-secret")).account_name == "bob"
    await store.close()
