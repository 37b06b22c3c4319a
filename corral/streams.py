"""Byte streams carried as websocket frames, both ways, by the API (console, port streams)
and by the node agent (its stream calls): one relay for both. An empty frame from the client
half-closes the far end's writer where ``half_close`` says so."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect


async def relay(
    ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half_close: bool
) -> None:
    """Copy both ways until either side ends, then close both."""

    async def to_client() -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(data)

    async def from_client() -> None:
        ended = False  # the client's side is closed; the other way goes on
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                data = (msg.get("text") or "").encode()
            if ended:
                continue
            if not data and half_close:
                ended = True
                if writer.can_write_eof():
                    writer.write_eof()
                continue
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(to_client()), asyncio.create_task(from_client())]
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
