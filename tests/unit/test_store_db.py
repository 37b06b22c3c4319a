"""The store's database URLs and its writer lock on both databases."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from corral.errors import Invalid
from corral.store import Store
from corral.store.db import async_url
from corral.store.models import Account, utcnow


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://corral@db/corral", "postgresql+psycopg://corral@db/corral"),
        ("postgres://corral:pw@db:5433/c", "postgresql+psycopg://corral:pw@db:5433/c"),
        (
            "postgresql+psycopg://corral@/c?host=/run/postgresql",
            "postgresql+psycopg://corral@/c?host=/run/postgresql",
        ),
        ("sqlite:////var/lib/corral/corral.db", "sqlite+aiosqlite:////var/lib/corral/corral.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_urls_get_the_async_driver(given: str, used: str) -> None:
    assert make_url(async_url(given)) == make_url(used)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+asyncpg://corral@db/corral", "driver 'postgresql+asyncpg'"),
        ("mysql://corral@db/corral", "driver 'mysql'"),
        ("postgresql://corral@db", "names no database"),
        ("not a url", "is not a URL"),
    ],
)
def test_database_urls_corral_cannot_use_are_refused_with_the_forms_that_work(
    url: str, says: str
) -> None:
    with pytest.raises(Invalid) as info:
        async_url(url)
    assert info.value.field == "db_url"
    assert says in info.value.message
    assert "postgresql://USER@HOST/DB" in info.value.message


@pytest.mark.postgres
async def test_the_schema_round_trips_times_flags_and_json(store: Store) -> None:
    now = utcnow()
    async with store.write() as s:
        s.add(Account(id="123456789012", name="rt", admin=True, created_at=now))
    async with store.read() as s:
        acct = (await s.scalars(select(Account).where(Account.name == "rt"))).one()
    assert acct.admin is True
    assert acct.created_at == now and acct.created_at.tzinfo is not None


@pytest.mark.postgres
async def test_writers_queue_one_behind_the_other(store: Store) -> None:
    """Two read-check-write transactions (as IPAM and name checks do) never interleave: the
    second sees the first's row, on SQLite (BEGIN IMMEDIATE) and PostgreSQL (advisory lock)."""
    inside = asyncio.Event()
    seen: list[int] = []

    async def writer(name: str, account_id: str, hold: bool) -> None:
        async with store.write() as s:
            count = len(list(await s.scalars(select(Account))))
            seen.append(count)
            s.add(Account(id=account_id, name=name, created_at=utcnow()))
            if hold:
                inside.set()
                await asyncio.sleep(0.3)

    first = asyncio.create_task(writer("first", "000000000001", hold=True))
    await inside.wait()
    await writer("second", "000000000002", hold=False)
    await first
    assert seen == [0, 1]
