"""Key pairs as records: import, create (the private key is shown once), list, delete."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from sqlalchemy import select

from corral import ids
from corral.controller import keys
from corral.controller.accounts import Caller
from corral.errors import Exists, NotFound
from corral.store.models import KeyPair

if TYPE_CHECKING:
    from corral.controller.service import Controller


class KeyPairs:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def add(
        self, caller: Caller, name: str, public_key: str | None, key_type: str = "ed25519"
    ) -> tuple[KeyPair, str | None]:
        """Import ``public_key``, or create a pair when it is None (returns the private key)."""
        keys.check_name(name)
        material = keys.parse_public(public_key) if public_key else keys.create(key_type)
        async with self.ctrl.store.write() as s:
            if await s.scalar(
                select(KeyPair.id).where(
                    KeyPair.account_id == caller.account_id, KeyPair.name == name
                )
            ):
                raise Exists(
                    f"key pair {name} already exists; remove it first or pick another name",
                    field="name",
                    resource="key_pair",
                )
            row = KeyPair(
                id=ids.new_id("key_pair"),
                account_id=caller.account_id,
                name=name,
                key_type=material.key_type,
                fingerprint=material.fingerprint,
                public_key=material.public_key,
            )
            s.add(row)
        return row, material.private_key

    async def list(self, caller: Caller) -> builtins.list[KeyPair]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(KeyPair)
                    .where(KeyPair.account_id == caller.account_id)
                    .order_by(KeyPair.name)
                )
            )

    async def get(self, caller: Caller, name: str) -> KeyPair:
        async with self.ctrl.store.read() as s:
            row = await s.scalar(
                select(KeyPair).where(
                    KeyPair.account_id == caller.account_id,
                    (KeyPair.name == name) | (KeyPair.id == name),
                )
            )
        if row is None:
            raise NotFound(f"key pair {name} does not exist", field="name", resource="key_pair")
        return row

    async def remove(self, caller: Caller, name: str) -> None:
        row = await self.get(caller, name)
        async with self.ctrl.store.write() as s:
            obj = await s.get(KeyPair, row.id)
            if obj is not None:
                await self.ctrl.tags.delete_resource(s, obj)
