"""Claims: named locks kept in the database, each with an owner (a controller) and a lease. They
hold across every controller sharing the database, and a claim whose owner stops renewing it
(a crashed or cut-off controller) expires and can be taken over. Time is the database's clock
on PostgreSQL, so controllers' clocks need not agree."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import secrets
from types import TracebackType

from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import WrongState
from corral.store import Store
from corral.store.models import Claim, utcnow

log = logging.getLogger(__name__)

LEASE = 30.0  # seconds a claim (or an operation) lives without renewal
WAIT = 600.0  # seconds a lock waits for another controller's claim before giving up


def owner_name(hostname: str, state_dir: str) -> str:
    """A controller's stable owner name: the same after a restart, so a restarted controller
    takes its own claims back at once; others must wait out the lease."""
    digest = hashlib.sha256(state_dir.encode()).hexdigest()[:12]
    return f"{hostname[:48]}:{digest}"


async def db_now(s: AsyncSession) -> dt.datetime:
    """Now by the database's clock (PostgreSQL), or this host's (SQLite: one host anyway)."""
    if s.get_bind().dialect.name == "postgresql":
        value = await s.scalar(text("SELECT now()"))
        assert isinstance(value, dt.datetime)
        return value.astimezone(dt.UTC)
    return utcnow()


class Claims:
    """This controller's claims: ``lock(key)`` for a section of code, ``try_claim``/``release``
    below it, ``renew()`` from a loop that runs more often than the lease ends."""

    def __init__(self, store: Store, owner: str, lease: float = LEASE) -> None:
        self.store = store
        self.owner = owner
        self.lease = dt.timedelta(seconds=lease)
        self.held: dict[str, str] = {}  # key -> the token of our acquisition
        self._local: dict[str, asyncio.Lock] = {}

    async def try_claim(self, key: str, holder: str = "") -> bool:
        """Take ``key`` if it is free, expired, or left by an earlier run of this controller;
        False if another live owner holds it."""
        token = secrets.token_hex(8)
        async with self.store.write() as s:
            now = await db_now(s)
            row = await s.get(Claim, key, with_for_update=True)
            if row is None:
                s.add(
                    Claim(
                        key=key,
                        owner=self.owner,
                        holder=holder,
                        token=token,
                        acquired_at=now,
                        expires_at=now + self.lease,
                    )
                )
            elif row.owner != self.owner and row.expires_at > now:
                return False
            else:
                if row.owner != self.owner:
                    log.warning(
                        "taking over %s from %s (lease ended %s)", key, row.owner, row.expires_at
                    )
                row.owner, row.holder, row.token = self.owner, holder, token
                row.acquired_at, row.expires_at = now, now + self.lease
        self.held[key] = token
        return True

    async def release(self, key: str) -> None:
        token = self.held.pop(key, None)
        if token is None:
            return
        async with self.store.write() as s:
            await s.execute(delete(Claim).where(Claim.key == key, Claim.token == token))

    async def holder(self, key: str) -> Claim | None:
        async with self.store.read() as s:
            return await s.get(Claim, key)

    async def renew(self) -> set[str]:
        """Extend the lease of every claim held; returns the keys found lost (taken over after
        our lease ended), which are forgotten."""
        tokens = set(self.held.values())
        keys = set(self.held)
        if not keys:
            return set()
        async with self.store.write() as s:
            now = await db_now(s)
            result = await s.execute(
                update(Claim)
                .where(Claim.token.in_(tokens), Claim.owner == self.owner)
                .values(expires_at=now + self.lease)
                .returning(Claim.key)
            )
            kept = set(result.scalars())
        lost = keys - kept
        for key in lost:
            log.error("claim %s was lost (its lease ended and another owner took it)", key)
        for key in lost:
            self.held.pop(key, None)
        return lost

    def forget(self, key: str) -> None:
        """Drop the local queue of a key no longer used (e.g. a terminated instance's)."""
        local = self._local.get(key)
        if local is not None and not local.locked():
            del self._local[key]

    def lock(self, key: str, holder: str = "", wait: float = WAIT) -> ClaimLock:
        """``holder`` says who holds it (default: the task's name, e.g. op-instance-stop-…)."""
        if not holder:
            task = asyncio.current_task()
            holder = task.get_name()[:128] if task is not None else ""
        return ClaimLock(self, key, self._local.setdefault(key, asyncio.Lock()), holder, wait)


class ClaimLock:
    """``async with claims.lock(key)``: one holder at a time across every controller. Tasks of
    this process queue on a local lock first, then the claim is taken in the database, polling
    while another controller holds it (at most ``wait`` seconds)."""

    def __init__(
        self, claims: Claims, key: str, local: asyncio.Lock, holder: str, wait: float
    ) -> None:
        self.claims, self.key, self.local, self.holder, self.wait = (
            claims,
            key,
            local,
            holder,
            wait,
        )

    def locked(self) -> bool:
        """Held by a task of this controller (another controller's claim is not seen here)."""
        return self.local.locked()

    async def __aenter__(self) -> ClaimLock:
        await self.local.acquire()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait
            pause = 0.05
            while not await self.claims.try_claim(self.key, self.holder):
                if loop.time() > deadline:
                    other = await self.claims.holder(self.key)
                    raise WrongState(
                        f"{self.key} is busy: controller {other.owner if other else '?'} holds "
                        f"it for {other.holder if other else '?'}; try again when that finishes"
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
        except BaseException:
            self.local.release()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # shielded: a cancelled holder still hands the claim back (else it waits out
            # the lease); if the database is gone, the lease ends it
            await asyncio.shield(self._release())
        finally:
            self.local.release()

    async def _release(self) -> None:
        try:
            await self.claims.release(self.key)
        except Exception as err:
            log.warning("releasing claim %s: %r (its lease will end it)", self.key, err)
