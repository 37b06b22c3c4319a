"""Instances: run, list, show, start, stop, reboot, terminate, console, SSH endpoint."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

from corral import models
from corral.api import views
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.errors import CorralError, WrongState
from corral.store.models import Instance

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


@router.post("/{ref}/ssh", response_model=models.SshEndpoint)
async def instance_ssh(
    ref: str,
    port: int = Query(22, ge=1, le=65535),
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.SshEndpoint:
    """A TCP endpoint on the host (127.0.0.1) that reaches the guest's SSH port."""
    inst = await ctx.controller.instances.get(who, ref)
    if inst.state != "running" or inst.private_ip is None:
        raise WrongState(
            f"instance {inst.name} is {inst.state}; start it first", resource="instance"
        )
    fwd = await ctx.controller.node(inst.node_id).forward(inst.id, inst.private_ip, port)
    user = "root"
    with contextlib.suppress(CorralError):
        user = (await ctx.controller.images.get(who, inst.image_id)).default_user
    return models.SshEndpoint(host=fwd.host, port=fwd.port, user=user, address=inst.private_ip)


@router.websocket("/{ref}/console")
async def instance_console(ws: WebSocket, ref: str) -> None:
    """The serial console, both ways, as binary WebSocket frames."""
    ctx: ApiContext = ws.app.state.ctx
    try:
        header = ws.headers.get("authorization", "")
        from corral.api.auth import _credentials

        key_id, secret = _credentials(header)
        who = await ctx.controller.accounts.authenticate(key_id, secret)
        inst = await ctx.controller.instances.get(who, ref)
        reader, writer = await ctx.controller.node(inst.node_id).console_connect(inst.id)
    except CorralError as err:
        await ws.close(code=4000 + min(err.http_status, 999), reason=err.message[:120])
        return
    await ws.accept()

    async def guest_to_client() -> None:
        while data := await reader.read(4096):
            await ws.send_bytes(data)

    async def client_to_guest() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(guest_to_client()), asyncio.create_task(client_to_guest())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        writer.close()
        with contextlib.suppress(Exception):
            await ws.close()


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
