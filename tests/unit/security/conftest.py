"""Second and third accounts over the REST API, for the security tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

from corral.controller.accounts import Caller
from corral.controller.service import Controller

Tenant = tuple[Caller, httpx.AsyncClient]


@pytest.fixture
def tenant(
    ctrl: Controller, app_transport: httpx.ASGITransport
) -> Callable[[str], AbstractAsyncContextManager[Tenant]]:
    """``async with tenant("bob") as (caller, client)``: a non-admin account and its client."""

    @asynccontextmanager
    async def make(name: str) -> AsyncIterator[Tenant]:
        acct = await ctrl.accounts.create(name)
        key = await ctrl.accounts.create_key(acct.id)
        caller = await ctrl.accounts.authenticate(key.id, key.secret)
        async with httpx.AsyncClient(
            transport=app_transport,
            base_url="http://corral.test",
            headers={"Authorization": f"Bearer {key.id}:{key.secret}"},
        ) as c:
            yield caller, c

    return make
