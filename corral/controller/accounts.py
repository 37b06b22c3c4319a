"""Accounts and access keys. The all-in-one set-up makes an ``admin`` account and writes its
key to ``<state>/admin.credentials`` (mode 0600) for the CLI on the same host. Secrets are
stored sealed (secrets_box.py); a non-admin account holds at most ``max_keys`` keys."""

from __future__ import annotations

import asyncio
import builtins
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from corral.controller.secrets_box import SecretBox
from corral.errors import Code, CorralError, Exists, Forbidden, Invalid, NotFound, Unauthorized
from corral.fsutil import atomic_write
from corral.ids import new_access_key, new_account_id
from corral.store import Store
from corral.store.models import AccessKey, Account

ACCOUNT_NAME_MAX = 64
MAX_KEYS = 2  # per non-admin account, as AWS IAM allows a user


class LimitExceeded(CorralError):
    code = Code.NO_RESOURCES


@dataclass(frozen=True)
class NewKey:
    """A key just made: the only time its secret is handed out."""

    id: str
    secret: str
    account_id: str
    description: str


@dataclass(frozen=True)
class Caller:
    """Who is asking: every API request runs as one account."""

    account_id: str
    account_name: str
    admin: bool
    access_key_id: str


class Accounts:
    def __init__(self, store: Store, box: SecretBox, max_keys: int = MAX_KEYS) -> None:
        self.store = store
        self.box = box
        self.max_keys = max_keys
        self._cache: dict[str, tuple[str, Caller]] = {}

    async def seal_stored(self) -> int:
        """Seal secrets an older Corral stored in the clear (idempotent; at start)."""
        async with self.store.write() as s:
            rows = [
                r for r in await s.scalars(select(AccessKey)) if not self.box.is_sealed(r.secret)
            ]
            for r in rows:
                r.secret = self.box.seal(r.id, r.secret)
        if rows:
            await asyncio.to_thread(self.store.scrub)  # no clear copy left in free pages
        return len(rows)

    async def create(self, name: str, admin: bool = False) -> Account:
        if not name or len(name) > ACCOUNT_NAME_MAX or not name.replace("-", "").isalnum():
            raise Invalid(
                f"account name {name!r} must be 1-64 letters, digits or hyphens", field="name"
            )
        async with self.store.write() as s:
            if await s.scalar(select(Account).where(Account.name == name)):
                raise Exists(f"account {name} already exists", field="name", resource="account")
            acct = Account(id=new_account_id(), name=name, admin=admin)
            s.add(acct)
        return acct

    async def get(self, ref: str) -> Account:
        async with self.store.read() as s:
            acct = await s.get(Account, ref) or await s.scalar(
                select(Account).where(Account.name == ref)
            )
        if acct is None:
            raise NotFound(f"account {ref} does not exist", resource="account")
        return acct

    async def list(self) -> builtins.list[Account]:
        async with self.store.read() as s:
            return list(await s.scalars(select(Account).order_by(Account.created_at)))

    async def create_key(self, account_id: str, description: str = "") -> NewKey:
        key_id, secret = new_access_key()
        async with self.store.write() as s:
            acct = await s.get(Account, account_id)
            if acct is None:
                raise NotFound(f"account {account_id} does not exist", resource="account")
            held = await s.scalar(
                select(func.count())
                .select_from(AccessKey)
                .where(AccessKey.account_id == account_id, AccessKey.active.is_(True))
            )
            if not acct.admin and (held or 0) >= self.max_keys:
                raise LimitExceeded(
                    f"account {acct.name} has {held} access keys, the most a non-admin account "
                    f"may hold ({self.max_keys}); delete one first "
                    "(DELETE /v1/accounts/keys/{key_id})",
                    field="access_key",
                    resource="access_key",
                    ec2_code="LimitExceeded",
                )
            s.add(
                AccessKey(
                    id=key_id,
                    account_id=account_id,
                    secret=self.box.seal(key_id, secret),
                    description=description,
                )
            )
        return NewKey(key_id, secret, account_id, description)

    async def delete_key(self, caller: Caller, key_id: str) -> None:
        """Delete an access key of the caller's account (an admin: of any account)."""
        async with self.store.write() as s:
            row = await s.get(AccessKey, key_id)
            if row is None or (row.account_id != caller.account_id and not caller.admin):
                raise NotFound(f"access key {key_id} does not exist", resource="access_key")
            if key_id == caller.access_key_id:
                raise Forbidden(
                    "an access key cannot delete itself; sign the request with another key",
                    field="access_key",
                )
            await s.delete(row)
        self._cache.pop(key_id, None)

    async def authenticate(self, key_id: str, secret: str) -> Caller:
        caller = await self.lookup(key_id)
        expected = self._cache[key_id][0]
        if not hmac.compare_digest(expected.encode(), secret.encode()):
            raise Unauthorized("the secret access key does not match the access key id")
        return caller

    async def lookup(self, key_id: str) -> Caller:
        """The account behind an access key id (cached; the secret stays server-side)."""
        if key_id not in self._cache:
            async with self.store.read() as s:
                row = await s.get(AccessKey, key_id)
                acct = await s.get(Account, row.account_id) if row is not None else None
            if row is None or acct is None or not row.active:
                raise Unauthorized(f"access key {key_id} is not known to this Corral")
            secret = self.box.open(key_id, row.secret)
            if secret is None:
                raise Unauthorized(
                    f"access key {key_id} cannot be checked: its secret was sealed with "
                    "another key file than this Corral's secrets.key"
                )
            self._cache[key_id] = (secret, Caller(acct.id, acct.name, acct.admin, key_id))
        return self._cache[key_id][1]

    def secret_for(self, key_id: str) -> str:
        return self._cache[key_id][0]

    async def ensure_admin(
        self, credentials_file: Path, endpoint: str, ca_bundle: str | None = None
    ) -> Caller:
        """The admin account, and a key for it in ``credentials_file`` (kept if it still works;
        ``ca_bundle``: the CA file an HTTPS endpoint is verified with)."""
        async with self.store.read() as s:
            admin = await s.scalar(select(Account).where(Account.name == "admin"))
        if admin is None:
            admin = await self.create("admin", admin=True)
        try:
            data = json.loads(credentials_file.read_text())
            caller = await self.authenticate(data["access_key_id"], data["secret_access_key"])
            if caller.account_id == admin.id:
                if data.get("endpoint") != endpoint or data.get("ca_bundle") != ca_bundle:
                    data["endpoint"] = endpoint
                    data["ca_bundle"] = ca_bundle
                    atomic_write(credentials_file, json.dumps(data, indent=2) + "\n", 0o600)
                return caller
        except (FileNotFoundError, ValueError, KeyError, Unauthorized):
            pass
        key = await self.create_key(admin.id, "all-in-one admin key")
        write_credentials(credentials_file, key.id, key.secret, admin.id, endpoint, ca_bundle)
        return await self.lookup(key.id)


def write_credentials(
    path: Path,
    key_id: str,
    secret: str,
    account_id: str,
    endpoint: str,
    ca_bundle: str | None = None,
) -> None:
    data: dict[str, str | None] = {
        "access_key_id": key_id,
        "secret_access_key": secret,
        "account_id": account_id,
        "endpoint": endpoint,
    }
    if ca_bundle:
        data["ca_bundle"] = ca_bundle
    atomic_write(path, json.dumps(data, indent=2) + "\n", 0o600)
    os.chmod(path, 0o600)
