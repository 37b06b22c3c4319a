"""The one client of the node API: a ``NodeClient`` whose methods are generated from
``corral.node.wire.CALLS``. The transport follows the node's URL: ``unix:/path`` for the agent
of an all-in-one Corral (httpx over a unix socket); ``https://IP:PORT`` for a joined node, with
mutual TLS (the caller's ``ssl_context`` carries the controller's client certificate and the
cluster's CA, ``corral.pki``).

A call that never reached the node (connection refused: the agent is restarting) is sent again
for a while; one whose answer was lost is sent again only when the declaration says it is
idempotent. Errors come back as ``corral.errors`` classes chosen by code, with their reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from typing import Any, cast
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed

from corral import errors
from corral.node import wire
from corral.node.client import NodeClient
from corral.node.spec import NODE_TIMEOUT, NODE_UNREACHABLE, WireError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
# a stream's handshake waits for the node to open its end (a guest's port: the agent's
# PORT_TIMEOUT, 4 s), so it gets more than a call's connection
STREAM_OPEN_TIMEOUT = 15.0
RETRY_WINDOW = 30.0  # seconds to keep trying a node that refuses connections
CHUNK = 65536


class RemoteNode:
    """A node reached over the wire. Its NodeClient methods are added from the declarations
    below the class; ``connect_node`` gives it typed as ``NodeClient``."""

    def __init__(
        self,
        url: str,
        retry_window: float = RETRY_WINDOW,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.retry_window = retry_window
        self.ssl_context = ssl_context
        self.uds: str | None = None
        if url.startswith("unix:"):
            self.uds = url[len("unix:") :]
            transport = httpx.AsyncHTTPTransport(uds=self.uds)
            self.base = "http://node"
        elif url.startswith("https://") and ssl_context is not None:
            transport = httpx.AsyncHTTPTransport(verify=ssl_context)
            self.base = url.rstrip("/")
        else:
            raise errors.Invalid(
                f"node address {url!r}: nodes are reached at unix:/path, or at https://IP:PORT "
                "with the cluster's certificates",
                field="node",
            )
        self.http = httpx.AsyncClient(transport=transport, base_url=self.base)
        self._pumps: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        for t in list(self._pumps):
            t.cancel()
        await self.http.aclose()

    def _request(self, call: wire.Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fields = list(call.request.model_fields)
        if len(args) > len(fields):
            raise TypeError(f"{call.name}() takes {len(fields)} arguments, {len(args)} given")
        data = dict(zip(fields, args, strict=False))
        for key, value in kwargs.items():
            if key in data or key not in fields:
                raise TypeError(f"{call.name}() got an unexpected or repeated argument {key!r}")
            data[key] = value
        return call.request.model_validate(data)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        call = wire.CALLS[name]
        req = self._request(call, args, kwargs)
        body = req.model_dump_json().encode()
        seconds = call.seconds(req)
        timeout = httpx.Timeout(seconds, connect=CONNECT_TIMEOUT)
        deadline = time.monotonic() + self.retry_window
        delay = 0.1
        while True:
            try:
                resp = await self.http.post(
                    f"/v1/calls/{name}",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=timeout,
                )
                break
            except httpx.TimeoutException as err:
                if isinstance(err, httpx.ConnectTimeout) and time.monotonic() < deadline:
                    pass  # never reached the node: sending again is safe
                else:
                    raise errors.EnvironmentProblem(
                        f"node {self.url} did not answer {name} within {seconds} s",
                        reason=NODE_TIMEOUT,
                    ) from err
            except httpx.TransportError as err:
                sent = not isinstance(err, httpx.ConnectError)
                if (sent and not call.idempotent) or time.monotonic() >= deadline:
                    raise errors.EnvironmentProblem(
                        f"node {self.url} is unreachable ({err!s} during {name}); "
                        "is its agent running?",
                        reason=NODE_UNREACHABLE,
                    ) from err
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        return self._answer(call, resp)

    def _answer(self, call: wire.Call, resp: httpx.Response) -> Any:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or ("result" not in data and "error" not in data):
            raise errors.CorralError(
                f"node {self.url} answered {call.name} with HTTP {resp.status_code} and no "
                "Corral answer (another version of the agent?)"
            )
        if "error" in data:
            raise wire.error_in(WireError.model_validate(data["error"]))
        return call.adapter.validate_python(data["result"])

    # -- streams -----------------------------------------------------------------------------
    async def stream(
        self, name: str, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a stream call; the caller gets a local stream pair whose bytes travel as
        websocket frames to the node and back."""
        call = wire.CALLS[name]
        req = self._request(call, args, kwargs)
        query = urlencode({k: v for k, v in req.model_dump(mode="json").items() if v is not None})
        path = f"/v1/streams/{name}?{query}"
        try:
            if self.uds is not None:
                ws = await unix_connect(
                    self.uds, f"ws://node{path}", open_timeout=STREAM_OPEN_TIMEOUT, max_size=2**22
                )
            else:
                ws = await connect(
                    "wss" + self.base[len("https") :] + path,
                    ssl=self.ssl_context,
                    open_timeout=STREAM_OPEN_TIMEOUT,
                    max_size=2**22,
                )
        except (OSError, TimeoutError) as err:
            raise errors.EnvironmentProblem(
                f"node {self.url} is unreachable ({err!s} opening {name})",
                reason=NODE_UNREACHABLE,
            ) from err
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT + 5))
        except (ConnectionClosed, TimeoutError, ValueError) as err:
            await ws.close()
            raise errors.EnvironmentProblem(
                f"node {self.url} did not open {name}: {err!s}", reason=NODE_UNREACHABLE
            ) from err
        if "error" in first:
            await ws.close()
            raise wire.error_in(WireError.model_validate(first["error"]))
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        task = asyncio.create_task(self._pump(ws, theirs), name=f"stream-{name}")
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return reader, writer

    async def _pump(self, ws: ClientConnection, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)

        async def up() -> None:
            while data := await reader.read(CHUNK):
                await ws.send(data)
            # our side ended (write_eof or close): an empty frame half-closes the node's end;
            # the other direction stays open until the node ends it
            await ws.send(b"")
            await asyncio.Future()

        async def down() -> None:
            async for msg in ws:
                writer.write(msg if isinstance(msg, bytes) else msg.encode())
                await writer.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            with contextlib.suppress(Exception):
                await ws.close()
            writer.close()


def _method(call: wire.Call) -> Any:
    if call.stream:

        async def stream(
            self: RemoteNode, *args: Any, **kwargs: Any
        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await self.stream(call.name, *args, **kwargs)

        stream.__name__ = call.name
        return stream

    async def method(self: RemoteNode, *args: Any, **kwargs: Any) -> Any:
        return await self.call(call.name, *args, **kwargs)

    method.__name__ = call.name
    return method


for _call in wire.CALLS.values():
    setattr(RemoteNode, _call.name, _method(_call))


def connect_node(
    url: str, retry_window: float = RETRY_WINDOW, ssl_context: ssl.SSLContext | None = None
) -> tuple[NodeClient, RemoteNode]:
    """A client for the node at ``url``: as the controller sees it, and as its owner closes it."""
    node = RemoteNode(url, retry_window, ssl_context)
    return cast(NodeClient, node), node
