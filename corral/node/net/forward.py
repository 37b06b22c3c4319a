"""Port forwards from 127.0.0.1 on the host to an address inside Corral's namespace: how
``corral ssh`` reaches a guest without routing the host into the namespace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from corral.node.net import netns

log = logging.getLogger(__name__)


class Forward:
    def __init__(self, namespace: str, address: str, port: int) -> None:
        self.namespace = namespace
        self.address = address
        self.port = port
        self.server: asyncio.Server | None = None
        self.local_port = 0
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.local_port = self.server.sockets[0].getsockname()[1]
        return self.local_port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            sock = await asyncio.to_thread(netns.socket_in, self.namespace)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (self.address, self.port)), 10
                )
            except (OSError, TimeoutError) as err:
                sock.close()
                log.info("forward to %s:%s failed: %s", self.address, self.port, err)
                return
            r2, w2 = await asyncio.open_connection(sock=sock)
            await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer))
        finally:
            writer.close()
            self._conns.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
