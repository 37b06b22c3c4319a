"""The event stream of GET /v1/events: state changes of instances, operations, nodes and
volumes. One poller per process reads the store while anyone listens (every ``interval``) and
hands each change to every subscriber allowed to see it; a subscriber that falls far behind is
dropped (its stream ends, and the client reconnects), never slowing the others."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select

from corral.controller.accounts import Caller
from corral.controller.operations import ACTIVE
from corral.store import Store
from corral.store.models import Instance, Node, Operation, Volume
from corral.viewmodels import Event

QUEUE = 1000  # events a subscriber may have unread before it is dropped

Key = tuple[str, str]  # (kind, id)


@dataclass(eq=False)  # each subscriber is itself (hashed by identity)
class Subscriber:
    caller: Caller
    backlog: int = 0  # snapshot events queued at subscription
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))

    def allowed(self, ev: Event) -> bool:
        if self.caller.admin:
            return True
        return ev.kind != "node" and ev.account_id == self.caller.account_id

    def put(self, ev: Event | None) -> bool:
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            return False
        return True


def event(
    kind: str, oid: str, account: str | None, change: str, now: float, data: dict[str, Any]
) -> Event:
    return Event.model_validate(
        {
            "kind": kind,
            "id": oid,
            "account_id": account,
            "change": change,
            "time": now,
            "data": data,
        }
    )


class Feed:
    def __init__(self, store: Store, interval: float = 1.0) -> None:
        self.store = store
        self.interval = interval
        self.subs: set[Subscriber] = set()
        self.state: dict[Key, tuple[str | None, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._since = dt.datetime.now(dt.UTC)

    @contextlib.asynccontextmanager
    async def subscribe(self, caller: Caller, snapshot: bool = False) -> AsyncIterator[Subscriber]:
        """A subscriber's queue; with ``snapshot`` it starts with every object's current state
        (change "snapshot")."""
        sub = Subscriber(caller)
        if self._task is None or self._task.done():
            self.state = await self._read()
            self._task = asyncio.create_task(self._run(), name="event-feed")
        if snapshot:
            now = time.time()
            for (kind, oid), (account, data) in sorted(self.state.items()):
                ev = event(kind, oid, account, "snapshot", now, data)
                if sub.allowed(ev) and sub.put(ev):
                    sub.backlog += 1
        self.subs.add(sub)
        try:
            yield sub
        finally:
            self.subs.discard(sub)
            if not self.subs and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in list(self.subs):
            sub.put(None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            new = await self._read()
            now = time.time()
            events = []
            for key, (account, data) in new.items():
                old = self.state.get(key)
                if old is None or old[1] != data:
                    change = "created" if old is None else "changed"
                    events.append(event(*key, account, change, now, data))
            for key, (account, data) in self.state.items():
                if key not in new:
                    events.append(event(*key, account, "removed", now, data))
            self.state = new
            for sub in list(self.subs):
                for ev in events:
                    if sub.allowed(ev) and not sub.put(ev):
                        self.subs.discard(sub)  # too far behind: end its stream
                        with contextlib.suppress(asyncio.QueueFull):
                            sub.queue.get_nowait()
                            sub.queue.put_nowait(None)
                        break

    async def _read(self) -> dict[Key, tuple[str | None, dict[str, Any]]]:
        """The watched fields of every live object (and of operations active or finished since
        the feed started)."""
        out: dict[Key, tuple[str | None, dict[str, Any]]] = {}
        async with self.store.read() as s:
            for i in await s.scalars(select(Instance).where(Instance.state != "terminated")):
                out[("instance", i.id)] = (
                    i.account_id,
                    {"name": i.name, "state": i.state, "node": i.node_id},
                )
            ops = select(Operation).where(
                or_(Operation.status.in_(ACTIVE), Operation.finished_at >= self._since)
            )
            for o in await s.scalars(ops):
                out[("operation", o.id)] = (
                    o.account_id,
                    {
                        "type": o.type,
                        "status": o.status,
                        "target": o.target_id,
                        "progress": round(o.progress, 2),
                        "message": o.message,
                    },
                )
            for n in await s.scalars(select(Node)):
                out[("node", n.id)] = (
                    None,
                    {"name": n.name, "state": n.state, "cordoned": n.cordoned},
                )
            for v in await s.scalars(select(Volume).where(Volume.state != "deleted")):
                out[("volume", v.id)] = (
                    v.account_id,
                    {"state": v.state, "instance": v.instance_id, "attach_state": v.attach_state},
                )
        return out
