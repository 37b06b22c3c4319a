"""The agent's server: a Starlette app generated from ``corral.node.wire.CALLS`` that hands each
call to a node object (the ``NodeAgent``, or the fake node in tests), and the listeners it runs
on: a unix socket (mode 0600) in all-in-one mode; TCP with mutual TLS in a cluster."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from corral import errors
from corral.node import wire
from corral.node.spec import WireError
from corral.streams import relay

log = logging.getLogger(__name__)

CHUNK = 65536


def create_app(node: Any) -> Starlette:
    missing = [name for name in wire.CALLS if not callable(getattr(node, name, None))]
    if missing:
        raise TypeError(f"{type(node).__name__} lacks the node calls {', '.join(missing)}")
    routes: list[BaseRoute] = [Route("/v1/version", _version, methods=["GET"])]
    for call in wire.CALLS.values():
        if call.stream:
            routes.append(WebSocketRoute(f"/v1/streams/{call.name}", _stream(node, call)))
        else:
            routes.append(Route(f"/v1/calls/{call.name}", _endpoint(node, call), methods=["POST"]))
    return Starlette(routes=routes)


async def _version(request: Request) -> Response:
    return JSONResponse({"wire": wire.WIRE_VERSION, "calls": sorted(wire.CALLS)})


def _invalid(call: wire.Call, err: ValidationError) -> errors.Invalid:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return errors.Invalid(f"{call.name}: {where}: {first['msg']}", field=where)


def _failure(call: wire.Call, err: Exception) -> tuple[int, WireError]:
    if isinstance(err, errors.CorralError):
        return err.http_status, wire.error_out(err)
    log.exception("node call %s failed", call.name, exc_info=err)
    return 500, WireError(code=str(errors.Code.INTERNAL), message=repr(err))


def _endpoint(node: Any, call: wire.Call) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            try:
                req = call.request.model_validate_json(await request.body())
            except ValidationError as err:
                raise _invalid(call, err) from None
            result = await getattr(node, call.name)(**dict(req))
            body = {"result": call.adapter.dump_python(result, mode="json")}
        except Exception as err:  # every failure crosses as a code, never as a class
            status, wire_err = _failure(call, err)
            return JSONResponse({"error": wire_err.model_dump()}, status_code=status)
        return JSONResponse(body)

    return endpoint


def _stream(node: Any, call: wire.Call) -> Callable[[WebSocket], Awaitable[None]]:
    """A byte stream: the first text frame says ``{"ok": true}`` or carries the error; then
    binary frames both ways until either end closes."""

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        try:
            try:
                req = call.request.model_validate(dict(ws.query_params))
            except ValidationError as err:
                raise _invalid(call, err) from None
            reader, writer = await getattr(node, call.name)(**dict(req))
        except Exception as err:
            _, wire_err = _failure(call, err)
            await ws.send_text(json.dumps({"error": wire_err.model_dump()}))
            await ws.close()
            return
        await ws.send_text(json.dumps({"ok": True}))
        await relay(ws, reader, writer, half_close=True)

    return endpoint


# -- listeners ---------------------------------------------------------------------------------
def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket only root (its owner) may connect to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise errors.EnvironmentProblem(
            f"cannot listen on {host}:{port} ({err.strerror}); is another agent running there? "
            "choose another with --listen",
        ) from err
    sock.listen(128)
    sock.setblocking(False)
    return sock


def listen(url: str) -> socket.socket:
    """The socket for a listen URL: ``unix:/path``, or ``https://IP:PORT`` (TCP; the caller
    serves TLS on it)."""
    if url.startswith("unix:"):
        return bind_unix(Path(url[len("unix:") :]))
    if url.startswith("https://"):
        host, _, port = url[len("https://") :].rpartition(":")
        if host and port.isdigit():
            return bind_tcp(host.strip("[]"), int(port))
    raise errors.Invalid(
        f"listen address {url!r}: unix:/path, or https://IP:PORT for a joined node",
        field="listen",
    )


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: whoever runs the agent owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: Starlette, tls: dict[str, Any] | None = None) -> Server:
    """``tls``: uvicorn's ssl_* settings (a joined node: its certificate, and the CA whose
    client certificates it requires)."""
    return Server(
        uvicorn.Config(
            app,
            **(tls or {}),
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            timeout_graceful_shutdown=5,
        )
    )
