"""The controller lock: which controller may declare nodes dead and fail their instances over
(issue 16). On PostgreSQL it is a session-level advisory lock held on a connection of its own,
plus the ``controller_epoch`` row, whose epoch grows with every new holder (so a holder that
lost its connection, and with it the lock, is told apart from the one that took over). On SQLite
the controller is the database's only user and always holds it.

``since`` is when this controller took the lock, by the database's clock: leases recorded before
then are counted from then (nodes kept running while no controller renewed them)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from corral.store import Store

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the controller lock ("ctrlck" in ASCII; the writer lock is another)
CONTROLLER_LOCK = 0x6374726C636B


class ControllerLock:
    def __init__(self, store: Store, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.epoch = 0
        self.since: dt.datetime | None = None
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return self.since is not None

    async def ensure(self, now: dt.datetime) -> bool:
        """Take the lock if free, or check that it is still held (``now``: the database's
        clock). Returns whether this controller holds it."""
        if self.store.is_sqlite:
            if self.since is None:
                self.since, self.epoch = now, 1
            return True
        try:
            if self._conn is not None:
                await self._conn.execute(text("SELECT 1"))  # the session, and the lock, live on
                return True
            return await self._acquire(now)
        except Exception as err:  # the connection died: the lock went with it
            log.warning("controller lock: lost (%s)", err)
            await self._drop()
            return False

    async def _acquire(self, now: dt.datetime) -> bool:
        if self._engine is None:
            self._engine = create_async_engine(self.store.url, pool_size=1, max_overflow=0)
        conn = await self._engine.connect()
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        got = (
            await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": CONTROLLER_LOCK})
        ).scalar()
        if not got:
            await conn.close()
            return False
        row: Any = (
            await conn.execute(
                text(
                    "INSERT INTO controller_epoch (id, epoch, holder, since) "
                    "VALUES (1, 1, :h, :s) ON CONFLICT (id) DO UPDATE SET "
                    "epoch = controller_epoch.epoch + 1, holder = :h, since = :s "
                    "RETURNING epoch"
                ),
                {"h": self.owner, "s": now.replace(tzinfo=None)},
            )
        ).first()
        self._conn = conn
        self.epoch = int(row[0]) if row else 0
        self.since = now
        log.info("controller lock taken (epoch %d)", self.epoch)
        return True

    async def _drop(self) -> None:
        self.since = None
        if self._conn is not None:
            with contextlib.suppress(Exception):  # at once (a closed session lets go later)
                await self._conn.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": CONTROLLER_LOCK}
                )
            with contextlib.suppress(Exception):  # really closed: the lock lives in the session
                await self._conn.invalidate()
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self._drop()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
