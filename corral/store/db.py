"""Engines and sessions. SQLite (WAL) all-in-one: reads in deferred transactions, writes in
``BEGIN IMMEDIATE`` ones so writers queue instead of failing with "database is locked"."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_engine(url: str, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # what is deleted or overwritten is zeroed, not left in free space (secrets, user data)
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Store:
    """The database: ``read()`` and ``write()`` give sessions; ``migrate()`` brings the schema
    to the newest Alembic revision."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._read_engine = _sqlite_engine(url, "BEGIN", pool_size=4)
            self._write_engine = _sqlite_engine(url, "BEGIN IMMEDIATE", pool_size=1)
        else:
            self._read_engine = create_async_engine(url, pool_size=10)
            self._write_engine = self._read_engine
        self._reader = async_sessionmaker(self._read_engine, expire_on_commit=False)
        # bumped by every write transaction: readers cache answers until it moves
        self.generation = 0
        self._writer = async_sessionmaker(self._write_engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reader() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed on normal exit, rolled back on any error."""
        try:
            async with self._writer() as session, session.begin():
                yield session
        finally:
            self.generation += 1

    def scrub(self) -> None:
        """Rewrite an SQLite database so no free page keeps old content (blocking; at start,
        after secrets stored in the clear were sealed). PostgreSQL: its autovacuum does it."""
        if not self.is_sqlite:
            return
        path = make_url(self.url).database
        if not path or path == ":memory:":
            return
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as c:
            c.execute("PRAGMA secure_delete=ON")
            c.execute("VACUUM")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sync_url(self) -> str:
        url = make_url(self.url)
        driver = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}[url.get_backend_name()]
        return url.set(drivername=driver).render_as_string(hide_password=False)

    def migrate(self) -> None:
        """Upgrade the schema to head (blocking; run before serving)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.sync_url().replace("%", "%%"))
        command.upgrade(cfg, "head")

    async def close(self) -> None:
        await self._read_engine.dispose()
        if self._write_engine is not self._read_engine:
            await self._write_engine.dispose()
