"""The operator views: counters of nodes and instances (GET /v1/stats, read by `corral top`
and the dashboard), the event stream (GET /v1/events, server-sent events) and the Prometheus
scrape (GET /metrics, admin only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from corral import viewmodels as vm
from corral.api import metrics
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller import capacity as cap
from corral.controller import observe
from corral.controller.accounts import Caller
from corral.controller.feed import Feed
from corral.controller.scheduler import Policy
from corral.errors import Forbidden
from corral.store.models import Instance

router = APIRouter(tags=["observe"], responses=RESPONSES)

KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies close idle ones)


@router.get("/v1/stats", response_model=vm.Stats)
async def stats_show(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> vm.Stats:
    """Counters of your running instances (an admin's: all, and the nodes'), totals since each
    QEMU started: take two samples for rates."""
    sample = await observe.sample(ctx.controller.store, ctx.controller.nodes, who)
    times = {n.id: n.stats.time for n in sample.nodes if n.stats}
    counts: dict[str, int] = {}
    for i in sample.instances:
        counts[i.node_id or ""] = counts.get(i.node_id or "", 0) + 1
    return vm.Stats(
        nodes=[
            vm.NodeStats(
                id=n.id,
                name=n.name,
                state=n.state,
                zone=n.zone,
                cordoned=n.cordoned,
                answered=n.stats is not None,
                error=n.error,
                time=n.stats.time if n.stats else None,
                cpus=n.stats.cpus if n.stats else 0,
                cpu_seconds=n.stats.cpu_seconds if n.stats else None,
                load1=n.stats.load1 if n.stats else None,
                memory_total=n.stats.memory_total if n.stats else None,
                memory_available=n.stats.memory_available if n.stats else None,
                instances=counts.get(n.id, 0),
            )
            for n in sample.nodes
        ],
        instances=[
            vm.InstanceStats(
                id=i.id,
                name=i.name,
                account_id=i.account_id,
                node=i.node_name or None,
                state=i.state,
                time=times.get(i.node_id or "") if i.stats else None,
                **(i.stats.model_dump(exclude={"id"}) if i.stats else {}),
            )
            for i in sample.instances
        ],
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics_show(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Prometheus's text format (admin only: it names every account's instances). Scrape
    with ``authorization: {type: Bearer, credentials: KEY_ID:SECRET}``."""
    if not who.admin:
        raise Forbidden("only an admin account may read /metrics (it shows every account)")
    sample = await observe.sample(ctx.controller.store, ctx.controller.nodes, who)
    p = Policy.from_settings(ctx.settings)
    async with ctx.controller.store.read() as s:
        by_state = {
            str(state): int(n)
            for state, n in await s.execute(
                select(Instance.state, func.count()).group_by(Instance.state)
            )
        }
        report = await cap.report(s, p)
    body = metrics.render(metrics.Snapshot(sample, by_state, report, p))
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def feed(ctx: ApiContext) -> Feed:
    found = ctx.extra.get("feed")
    if not isinstance(found, Feed):
        found = Feed(ctx.controller.store)
        ctx.extra["feed"] = found
    return found


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def events_follow(
    request: Request,
    snapshot: bool = Query(False, description="start with every object's current state"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> StreamingResponse:
    """State changes of instances, operations, nodes and volumes as server-sent events
    (``event: <kind>``, ``data: <Event as JSON>``); yours only unless you are an admin. With
    ``snapshot``, every object's current state first, then ``event: ready``."""
    hub = feed(ctx)

    async def stream() -> AsyncIterator[bytes]:
        async with hub.subscribe(who, snapshot) as sub:
            yield b": corral events\n\n"
            for _ in range(sub.backlog):
                ev = sub.queue.get_nowait()
                if ev is not None:
                    yield f"event: {ev.kind}\ndata: {ev.model_dump_json()}\n\n".encode()
            if snapshot:
                yield b"event: ready\ndata: {}\n\n"  # the snapshot is complete
            while not await request.is_disconnected():
                try:
                    ev = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if ev is None:  # dropped for falling behind: the client reconnects
                    return
                yield f"event: {ev.kind}\ndata: {ev.model_dump_json()}\n\n".encode()

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
