"""The service itself: health (no credentials), facts and checks for `corral doctor`, nodes,
and shutdown for `corral down`."""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import Forbidden
from corral.node.spec import NodeInfo

if TYPE_CHECKING:
    from corral.node.client import NodeClient

router = APIRouter(prefix="/v1", tags=["system"], responses=RESPONSES)


@router.get("/health")
async def health(ctx: ApiContext = Depends(get_context)) -> dict[str, str]:
    return {"status": "ok", "version": ctx.version}


@router.get("/system", response_model=models.SystemInfo)
async def system_show(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.SystemInfo:
    """Facts about this Corral; the host's (state directory, database, namespace, node,
    checks) only for an admin account, empty for others."""
    st = ctx.settings
    if not who.admin:
        # the host's own facts (paths, namespace, QEMU, checks) are for the operator
        return models.SystemInfo(
            version=ctx.version,
            region=st.region,
            availability_zone=st.availability_zone,
            state_dir="",
            database="",
            namespace="",
            subnet=st.subnet,
            domain=st.domain,
            node={},
        )
    nodes = list(ctx.controller.nodes.values())
    info = await nodes[0].info() if nodes else None
    checks = await _checks(ctx, info)
    return models.SystemInfo(
        version=ctx.version,
        region=st.region,
        availability_zone=st.availability_zone,
        state_dir=str(st.state_dir),
        database=ctx.controller.store.url.split("://")[0],
        namespace=st.namespace,
        subnet=st.subnet,
        domain=st.domain,
        node=info.model_dump() if info else {},
        checks=checks,
    )


async def _checks(ctx: ApiContext, info: NodeInfo | None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append({"name": name, "ok": ok, "detail": detail})

    st = ctx.settings
    # the node reports its namespace only when it exists
    add("namespace", bool(info and info.namespace), f"network namespace {st.namespace}")
    for node_id, strays in ctx.controller.reconciler.strays.items():
        add(f"strays on {node_id}", not strays, "; ".join(strays) or "none")
    for node_id, node in ctx.controller.nodes.items():
        add(f"qemu confinement on {node_id}", *await _confinement_check(node))
    free = shutil.disk_usage(st.state_dir).free
    add("disk", free > 1 << 30, f"{free >> 30} GiB free in {st.state_dir}")
    return out


async def _confinement_check(node: NodeClient) -> tuple[bool, str]:
    """Every running QEMU as observed: its own uid, no capabilities, seccomp, its own root."""
    bad, good = [], 0
    for obs in await node.instances():
        if not obs.running or not obs.spec:
            continue
        c = await node.instance_confinement(obs.id)
        if c is None:
            continue
        if c.uid == 0 or c.capabilities != "0" or c.seccomp != "filter" or not c.jail:
            bad.append(f"{obs.id}: uid {c.uid}, seccomp {c.seccomp}, jail {c.jail or 'none'}")
        else:
            good += 1
    if bad:
        return False, "; ".join(bad) + " (restart those instances to confine them)"
    return True, f"{good} running QEMU(s), each with its own uid, seccomp and jail"


@router.get("/nodes", response_model=list[models.Node])
async def node_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[models.Node]:
    """The hypervisor nodes (an admin's view: other accounts' instances run there too)."""
    if not who.admin:
        raise Forbidden("only an admin account sees the nodes")
    from corral.api.rest.cluster import node_views

    return await node_views(ctx)


@router.post("/system/shutdown", status_code=202)
async def system_shutdown(
    req: models.Shutdown, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> dict[str, str]:
    if not who.admin:
        raise Forbidden("only an admin account may shut Corral down")
    if ctx.shutdown is None:
        raise Forbidden("this server cannot be shut down over the API")
    if req.stop_instances:
        await ctx.controller.stop_all(req.timeout)
    shutdown = ctx.shutdown
    asyncio.get_running_loop().call_later(
        0.2, lambda: asyncio.ensure_future(shutdown(req.stop_instances, req.timeout))
    )
    return {"status": "shutting down"}
