"""A small typed layer over ``qemu.qmp``: the few commands Corral uses, each with a timeout.

A QMP socket takes one client: the agent holds this one; ``qmp-debug.sock`` is for people."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
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


class NotASocket(OSError):
    pass


def own_socket(path: Path) -> None:
    """Refuse anything at ``path`` but a socket: QEMU, unprivileged, owns the directory, and a
    symlink there must not lead the agent (root) to another instance's QMP or console."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISSOCK(mode):
        raise NotASocket(f"{path} is not a socket (a {stat.filemode(mode)[0]!r} entry)")


class Qmp:
    def __init__(self, socket_path: Path, name: str) -> None:
        self.path = socket_path
        self.client = QMPClient(name)
        self.state = LinkState.IDLE
        self._fd_lock = asyncio.Lock()

    async def connect(self, timeout: float = 10.0) -> None:
        self.state = LinkState.CONNECTING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        while loop.time() < deadline:
            try:
                own_socket(self.path)
                await asyncio.wait_for(self.client.connect(str(self.path)), timeout)
                self.state = LinkState.CONNECTED
                return
            except NotASocket as err:
                last = err
                break
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

    async def add_fd(self, path: Path, write: bool, opaque: str) -> str:
        """Open ``path`` here (as root) and hand the descriptor to QEMU, which cannot open it
        from its jail; returns the ``/dev/fdset/N`` name to open it by (``blockdev-add``)."""
        if self.state != LinkState.CONNECTED:
            raise QmpUnavailable(f"QMP link to {self.path} is {self.state}")
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
        try:
            async with self._fd_lock:  # the descriptor goes with the next command
                self.client.send_fd_scm(fd)
                res = await self.execute("add-fd", {"opaque": opaque})
        finally:
            os.close(fd)
        return f"/dev/fdset/{res['fdset-id']}"

    async def get_fd(self, fd: int, name: str) -> None:
        """Hand QEMU an open descriptor (a socket, say) under ``name``, for commands that take
        ``fd:name`` or ``{"type": "fd", "str": name}`` (QEMU in its jail opens no sockets of
        its own on the node's addresses). An older descriptor of that name is replaced."""
        if self.state != LinkState.CONNECTED:
            raise QmpUnavailable(f"QMP link to {self.path} is {self.state}")
        async with self._fd_lock:
            self.client.send_fd_scm(fd)
            await self.execute("getfd", {"fdname": name})

    async def remove_fds(self, opaque: str) -> None:
        """Drop the descriptors handed over as ``opaque`` (after their block node is gone)."""
        for fdset in await self.execute("query-fdsets"):
            for fd in fdset.get("fds") or []:
                if fd.get("opaque") == opaque:
                    with contextlib.suppress(QmpUnavailable):
                        await self.execute(
                            "remove-fd", {"fdset-id": fdset["fdset-id"], "fd": fd["fd"]}
                        )

    async def set_link(self, nic: str, up: bool) -> None:
        await self.execute("set_link", {"name": nic, "up": up})

    async def close(self) -> None:
        self.state = LinkState.CLOSED
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except (QMPError, OSError, TimeoutError, EOFError):
            pass
