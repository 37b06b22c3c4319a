"""A node's event log: what happened on the node (an instance started, a QEMU exited), numbered
by a sequence that grows by one per event. The controller follows it with long polls and
resumes from the last number it handled, after either side restarts.

On the agent the log is a JSON-lines file next to an epoch file: the epoch is a random word
made with the log, so a controller holding a sequence number of a log that was since started
afresh (a wiped state directory) notices and reconciles in full instead of waiting for numbers
that will never come. The newest ``keep`` events are kept; older ones are dropped (a follower
that fell that far behind is told so: ``gap``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from corral.fsutil import atomic_write
from corral.node.spec import Event, EventBatch

BATCH = 1000  # events per answer at most


class EventLog:
    def __init__(self, path: Path | None, node: str, keep: int = 10000) -> None:
        self.path = path
        self.node = node
        self.keep = keep
        self.events: list[Event] = []
        self.last = 0
        self._changed = asyncio.Event()
        self._lines = 0
        self.epoch = self._load() if path is not None else secrets.token_hex(8)

    def _load(self) -> str:
        assert self.path is not None
        epoch_file = self.path.with_suffix(".epoch")
        try:
            epoch = epoch_file.read_text().strip()
        except FileNotFoundError:
            epoch = ""
        if not epoch:  # a new log: any old lines belong to no epoch anyone knows
            epoch = secrets.token_hex(8)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)
            atomic_write(epoch_file, epoch + "\n")
            return epoch
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
            for line in fh:
                try:
                    ev = Event.model_validate_json(line)
                except ValueError:
                    continue  # a line torn by a crash mid-write
                self.events.append(ev)
                self._lines += 1
        self.events = self.events[-self.keep :]
        self.last = self.events[-1].seq if self.events else 0
        return epoch

    def append(self, kind: str, payload: dict[str, Any]) -> Event:
        """Record an event (durably when the log has a file) and wake the followers."""
        self.last += 1
        ev = Event(node=self.node, seq=self.last, kind=kind, time=time.time(), payload=payload)
        self.events.append(ev)
        if len(self.events) > self.keep:
            del self.events[: len(self.events) - self.keep]
        if self.path is not None:
            self._write(ev)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return ev

    def _write(self, ev: Event) -> None:
        assert self.path is not None
        if self._lines >= 2 * self.keep:  # compact: rewrite only what is kept
            atomic_write(self.path, "".join(e.model_dump_json() + "\n" for e in self.events))
            self._lines = len(self.events)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (ev.model_dump_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1

    def batch(self, after: int, epoch: str) -> EventBatch:
        """Events after ``after``. A caller new to this log (another or no epoch) gets none,
        only where the log stands and ``gap``: it must look at the node in full once."""
        if epoch != self.epoch:
            return EventBatch(epoch=self.epoch, last=self.last, gap=True)
        first = self.events[0].seq if self.events else self.last + 1
        out = [e for e in self.events if e.seq > after][:BATCH]
        return EventBatch(
            epoch=self.epoch, events=out, last=self.last, gap=after < first - 1 or after > self.last
        )

    async def read(self, after: int = 0, epoch: str = "", wait: float = 0.0) -> EventBatch:
        """Events after ``after`` (of ``epoch``); with ``wait``, hold the answer up to that
        many seconds until there is one."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            batch = self.batch(after, epoch)
            left = deadline - asyncio.get_running_loop().time()
            if batch.events or batch.gap or left <= 0:
                return batch
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation that
            # arrives as the event fires, and a follower being closed would then poll on
            waiter = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({waiter}, timeout=left)
            finally:
                waiter.cancel()
