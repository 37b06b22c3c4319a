"""Answers to read-only Describe* calls, kept until the next write to the store.

A listing of a thousand instances costs tens of milliseconds of CPU to read and render; clients
that poll (waiters, dashboards, autoscalers) ask the same question again and again between
changes. Any committed write transaction bumps the store's generation and so invalidates every
entry: never stale, only sometimes cold. The request id is the one part that changes per answer."""

from __future__ import annotations

from collections import OrderedDict

PLACEHOLDER = "00000000-0000-0000-0000-corralcached"
MAX_ENTRIES = 128
MAX_BYTES = 64 << 20


class AnswerCache:
    def __init__(self) -> None:
        self._items: OrderedDict[tuple[object, ...], tuple[int, bytes]] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def key(
        account_id: str, action: str, pairs: list[tuple[str, str]]
    ) -> tuple[object, ...] | None:
        """The cache key of a call, or None when it must not be cached."""
        if not action.startswith("Describe"):
            return None
        kept = []
        for k, v in pairs:
            if k.lower().startswith("x-amz-") or k in ("Action", "Version"):
                continue
            if k == "DryRun" and v.lower() == "true":
                return None
            kept.append((k, v))
        return (account_id, action, tuple(sorted(kept)))

    def get(self, key: tuple[object, ...], generation: int, request_id: str) -> bytes | None:
        hit = self._items.get(key)
        if hit is None or hit[0] != generation:
            return None
        self._items.move_to_end(key)
        return hit[1].replace(PLACEHOLDER.encode(), request_id.encode(), 1)

    def put(self, key: tuple[object, ...], generation: int, body: bytes) -> None:
        if len(body) > MAX_BYTES // 4:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._items[key] = (generation, body)
        self._bytes += len(body)
        while self._items and (len(self._items) > MAX_ENTRIES or self._bytes > MAX_BYTES):
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= len(dropped)
