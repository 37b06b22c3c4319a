"""Engines and sessions on SQLite (the all-in-one default) or PostgreSQL (clusters).

SQLite (WAL): reads in deferred transactions, writes in ``BEGIN IMMEDIATE`` ones so writers queue
instead of failing with "database is locked". PostgreSQL (psycopg 3, async): every write
transaction first takes one transaction-scoped advisory lock (at its first statement), the same
single-writer rule, so the controller's read-check-write transactions (IPAM, names, claims)
behave alike on both; commit or rollback releases it, also when a controller dies mid-way."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from corral.errors import Invalid

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key of the writer lock ("corral" in ASCII: one constant for every
# controller sharing the database)
WRITER_LOCK = 0x636F7272616C
LOCK_TIMEOUT_MS = 60_000  # a writer waiting longer than this fails (SQLite: busy_timeout)
POOL_WAIT = 60.0  # seconds a session waits for a pooled connection (the writer: one, queued)
# PostgreSQL's SQLSTATEs a later attempt can get past: lock wait past lock_timeout, the server
# shutting down, serialization failure, deadlock; class 08: the connection
_BUSY_STATES = ("55P03", "57P01", "40001", "40P01")


def busy(err: BaseException) -> bool:
    """A store error that a later attempt can get past, not a fault of the work: no writer
    connection came free within ``POOL_WAIT`` (a burst of writes queued in this process), a
    lock wait past PostgreSQL's ``lock_timeout``, SQLite still locked after its busy timeout,
    a connection lost. Operations run again after one (controller/operations.py)."""
    if isinstance(err, PoolTimeout):
        return True
    if not isinstance(err, DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    state = str(getattr(err.orig, "sqlstate", "") or "")
    return state in _BUSY_STATES or state.startswith("08") or "database is locked" in str(err)


_SQLITE = {"sqlite", "sqlite+aiosqlite"}
_POSTGRES = {"postgresql", "postgres", "postgresql+psycopg"}


def async_url(url: str) -> str:
    """``url`` with the async driver Corral uses: aiosqlite for SQLite, psycopg 3 for PostgreSQL
    (``postgresql://…`` and ``postgresql+psycopg://…`` mean the same). Any other database or
    driver is refused with the forms that work."""
    hint = "use sqlite+aiosqlite:///PATH or postgresql://USER@HOST/DB (psycopg 3)"
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise Invalid(f"database URL {url!r} is not a URL: {hint}", field="db_url") from err
    name = parsed.drivername
    if name in _SQLITE:
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif name in _POSTGRES:
        if not parsed.database:
            raise Invalid(
                f"database URL {parsed!r} names no database: add /DBNAME ({hint})", field="db_url"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    else:
        raise Invalid(
            f"database URL {parsed!r}: driver {name!r} is not supported; {hint}", field="db_url"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: str, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=POOL_WAIT)

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


def _postgres_writer(url: str) -> AsyncEngine:
    """One connection whose every transaction starts by taking the writer lock (at its first
    statement, as SQLite's ``BEGIN IMMEDIATE``); a lock wait ends after ``LOCK_TIMEOUT``."""
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=POOL_WAIT,
        pool_pre_ping=True,
        connect_args={"options": f"-c lock_timeout={LOCK_TIMEOUT_MS}"},
    )

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK})")

    return engine


class Store:
    """The database: ``read()`` and ``write()`` give sessions; ``migrate()`` brings the schema
    to the newest Alembic revision."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"
        if self.is_sqlite:
            self._read_engine = _sqlite_engine(self.url, "BEGIN", pool_size=4)
            self._write_engine = _sqlite_engine(self.url, "BEGIN IMMEDIATE", pool_size=1)
        else:
            self._read_engine = create_async_engine(
                self.url, pool_size=8, max_overflow=4, pool_timeout=60, pool_pre_ping=True
            )
            self._write_engine = _postgres_writer(self.url)
        self._reader = async_sessionmaker(self._read_engine, expire_on_commit=False)
        # bumped by every write transaction: readers cache answers until it moves
        self.generation = 0
        self._writer = async_sessionmaker(self._write_engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reader() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def write(self, *, exclusive: bool = True) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed on normal exit, rolled back on any error.

        ``exclusive`` (the default) queues it behind every other exclusive writer of the
        database, whichever controller runs it. Only code whose correctness rests on row locks
        alone (``SELECT … FOR UPDATE SKIP LOCKED``, conditional updates) passes
        ``exclusive=False``, and never waits for a row lock; on SQLite every write is exclusive.
        Never open a write inside another: the inner one would wait for the outer."""
        maker = self._writer if exclusive or self.is_sqlite else self._reader
        try:
            async with maker() as session, session.begin():
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
