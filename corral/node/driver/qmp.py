"""A small typed layer over ``qemu.qmp``: the few commands Corral uses, each with a timeout.

A QMP socket takes one client: the agent holds this one; ``qmp-debug.sock`` is for people."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient
from qemu.qmp.error import QMPError

from corral.errors import CorralError

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

COMMAND_TIMEOUT = 10.0


class LinkState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class QmpUnavailable(CorralError):
    pass


class Qmp:
    def __init__(self, socket_path: Path, name: str) -> None:
        self.path = socket_path
        self.client = QMPClient(name)
        self.state = LinkState.IDLE

    async def connect(self, timeout: float = 10.0) -> None:
        self.state = LinkState.CONNECTING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        while loop.time() < deadline:
            try:
                await asyncio.wait_for(self.client.connect(str(self.path)), timeout)
                self.state = LinkState.CONNECTED
                return
            except (OSError, QMPError, TimeoutError) as err:
                last = err
                await asyncio.sleep(0.05)
        self.state = LinkState.CLOSED
        raise QmpUnavailable(f"could not connect to QMP at {self.path}: {last}")

    async def execute(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Any:
        if self.state != LinkState.CONNECTED:
            raise QmpUnavailable(f"QMP link to {self.path} is {self.state}")
        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), timeout)
        except (QMPError, OSError, TimeoutError, EOFError) as err:
            raise QmpUnavailable(f"QMP {cmd} failed: {err or type(err).__name__}") from err

    async def status(self) -> str:
        res = await self.execute("query-status")
        return str(res["status"])

    async def powerdown(self) -> None:
        await self.execute("system_powerdown")

    async def ctrl_alt_del(self) -> None:
        keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
        await self.execute("send-key", {"keys": keys})

    async def reset(self) -> None:
        await self.execute("system_reset")

    async def quit(self) -> None:
        try:
            await self.execute("quit", timeout=5)
        except QmpUnavailable:
            pass  # the link drops as QEMU exits

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """QMP events until the link drops."""
        with self.client.listener() as listener:
            async for event in listener:
                yield dict(event)

    def listener(self, names: list[str]) -> contextlib.AbstractContextManager[EventListener]:
        """A queue of the named events from now on (open it before the command that causes
        them, so none is missed)."""
        return self.client.listener(names)

    async def set_link(self, nic: str, up: bool) -> None:
        await self.execute("set_link", {"name": nic, "up": up})

    async def close(self) -> None:
        self.state = LinkState.CLOSED
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except (QMPError, OSError, TimeoutError, EOFError):
            pass
