"""Instances: run, list, show, start, stop, reboot, terminate, and streams to the serial
console and to the guest's ports."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Depends, Query, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse

from corral import models
from corral.api import views
from corral.api.auth import _credentials
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.api.ui import COOKIE, session_caller
from corral.controller.accounts import Caller
from corral.errors import CorralError, Invalid, Unauthorized, WrongState
from corral.store.models import Instance
from corral.streams import relay

router = APIRouter(prefix="/v1/instances", tags=["instances"], responses=RESPONSES)


@router.get("", response_model=list[models.Instance])
async def instance_list(
    all: bool = Query(True, description="include terminated instances"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> list[models.Instance]:
    rows = await ctx.controller.instances.list(who, include_terminated=all)
    names = {i.id: i.name for i in await ctx.controller.images.list(who)}
    return [views.instance(r, names.get(r.image_id, ""), ctx.settings.domain) for r in rows]


@router.post("", status_code=202, response_model=models.InstanceAccepted)
async def instance_run(
    req: models.InstanceCreate, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.InstanceAccepted:
    inst, op = await ctx.controller.instances.run(who, req)
    return await _accepted(ctx, who, inst, op)


@router.get("/{ref}", response_model=models.Instance)
async def instance_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Instance:
    return await _view(ctx, who, await ctx.controller.instances.get(who, ref))


@router.patch("/{ref}", response_model=models.Instance)
async def instance_update(
    ref: str,
    req: models.InstanceUpdate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Instance:
    inst = await ctx.controller.instances.get(who, ref)
    if req.name is not None:
        inst = await ctx.controller.instances.rename(who, ref, req.name)
    return await _view(ctx, who, inst)


@router.post("/{ref}/start", status_code=202, response_model=models.InstanceAccepted)
async def instance_start(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.InstanceAccepted:
    inst, op = await ctx.controller.instances.start(who, ref)
    return await _accepted(ctx, who, inst, op)


@router.post("/{ref}/stop", status_code=202, response_model=models.InstanceAccepted)
async def instance_stop(
    ref: str,
    req: models.StopRequest | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.InstanceAccepted:
    req = req or models.StopRequest()
    inst, op = await ctx.controller.instances.stop(who, ref, req.timeout, req.force)
    return await _accepted(ctx, who, inst, op)


@router.post("/{ref}/reboot", status_code=202, response_model=models.InstanceAccepted)
async def instance_reboot(
    ref: str,
    req: models.RebootRequest | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.InstanceAccepted:
    req = req or models.RebootRequest()
    inst, op = await ctx.controller.instances.reboot(who, ref, req.timeout)
    return await _accepted(ctx, who, inst, op)


@router.post("/{ref}/migrate", status_code=202, response_model=models.InstanceAccepted)
async def instance_migrate(
    ref: str,
    req: models.MigrateRequest | None = None,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.InstanceAccepted:
    """Move a running instance to another node while it runs, disks included; the
    operation shows the phase and progress (``corral op show``)."""
    req = req or models.MigrateRequest()
    inst, op = await ctx.controller.migrations.request(who, ref, req.to, req.timeout)
    return await _accepted(ctx, who, inst, op)


@router.delete("/{ref}", status_code=202, response_model=models.InstanceAccepted)
async def instance_terminate(
    ref: str,
    force: bool = False,
    timeout: float | None = Query(None, ge=0, le=3600, description="seconds before forcing"),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.InstanceAccepted:
    inst, op = await ctx.controller.instances.terminate(who, ref, timeout, force)
    return await _accepted(ctx, who, inst, op)


@router.get("/{ref}/console-output", response_class=PlainTextResponse)
async def instance_console_output(
    ref: str,
    tail: int = Query(65536, ge=0, le=1 << 24),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> PlainTextResponse:
    inst = await ctx.controller.instances.get(who, ref)
    if inst.node_id is None or inst.state == "terminated":
        return PlainTextResponse("")
    data = await ctx.controller.node(inst.node_id).console_log(inst.id, tail)
    return PlainTextResponse(data.decode(errors="replace"))


@router.get("/{ref}/confinement", response_model=models.Confinement)
async def instance_confinement(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Confinement:
    """How the instance's QEMU is confined (its uid, seccomp, jail, cgroup), as observed."""
    inst = await ctx.controller.instances.get(who, ref)
    seen = None
    if inst.state == "running" and inst.node_id is not None:
        seen = await ctx.controller.node(inst.node_id).instance_confinement(inst.id)
    if seen is None:
        raise WrongState(
            f"instance {inst.name} is {inst.state}; its QEMU runs only while it runs",
            resource="instance",
        )
    return models.Confinement.model_validate(seen.model_dump())


@router.websocket("/{ref}/console")
async def instance_console(ws: WebSocket, ref: str) -> None:
    """The serial console, both ways, as binary WebSocket frames."""
    ctx: ApiContext = ws.app.state.ctx
    try:
        who = await _ws_caller(ctx, ws)
        inst = await ctx.controller.instances.get(who, ref)
        reader, writer = await ctx.controller.node(inst.node_id).console_connect(inst.id)
    except CorralError as err:
        await _ws_refuse(ws, err)
        return
    await ws.accept()
    await relay(ws, reader, writer, half_close=False)


@router.websocket("/{ref}/ports/{port}")
async def instance_port(ws: WebSocket, ref: str, port: int) -> None:
    """A TCP stream to ``port`` of a running instance (what `corral ssh` uses as its
    ProxyCommand), as binary WebSocket frames; an empty frame from the client ends its side
    of the stream (half-close). Only the caller that opened it can use it: no port is opened
    on the host, and the stream ends when either side closes."""
    ctx: ApiContext = ws.app.state.ctx
    try:
        who = await _ws_caller(ctx, ws)
        if not 1 <= port <= 65535:
            raise Invalid(f"port {port} is not a TCP port (1-65535)", field="port")
        inst = await ctx.controller.instances.get(who, ref)
        if inst.state != "running" or inst.private_ip is None or inst.node_id is None:
            raise WrongState(
                f"instance {inst.name} is {inst.state}; start it first", resource="instance"
            )
        node = ctx.controller.node(inst.node_id)
        reader, writer = await node.port_connect(inst.id, inst.private_ip, port)
    except CorralError as err:
        await _ws_refuse(ws, err)
        return
    await ws.accept()
    await relay(ws, reader, writer, half_close=True)


async def _ws_caller(ctx: ApiContext, ws: WebSocket) -> Caller:
    """The account behind a WebSocket's ``Authorization`` header (as for every other call)."""
    header = ws.headers.get("authorization")
    if not header and COOKIE in ws.cookies:  # the dashboard's console (corral.api.ui)
        return session_caller(ctx, ws, websocket=True)
    if not header:
        raise Unauthorized("this stream needs credentials: `Authorization: Bearer KEY:SECRET`")
    key_id, secret = _credentials(header)
    return await ctx.controller.accounts.authenticate(key_id, secret)


async def _ws_refuse(ws: WebSocket, err: CorralError) -> None:
    """Refuse before the handshake completes: the client gets the error's HTTP status and the
    usual error body (or a plain 403 where the server cannot send a denial response), never a
    stream."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else None
        await ws.send_denial_response(
            JSONResponse({"error": err.to_dict()}, status_code=err.http_status, headers=headers)
        )
        return
    await ws.close(code=4000 + min(err.http_status, 999), reason=err.message[:120])


async def _view(ctx: ApiContext, who: Caller, inst: Instance) -> models.Instance:
    name = ""
    with contextlib.suppress(CorralError):
        name = (await ctx.controller.images.get(who, inst.image_id)).name
    return views.instance(inst, name, ctx.settings.domain)


async def _accepted(
    ctx: ApiContext, who: Caller, inst: Instance, op: object | None
) -> models.InstanceAccepted:
    from corral.store.models import Operation

    return models.InstanceAccepted(
        operation=views.operation(op) if isinstance(op, Operation) else None,
        instance=await _view(ctx, who, inst),
    )
