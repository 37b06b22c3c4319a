"""Streams to a guest's TCP port through the API (``/v1/instances/{ref}/ports/{port}``): the
hidden `corral tunnel` command that `corral ssh` gives ssh as its ProxyCommand, and the wait for
an SSH banner. Nothing listens on the host: only the caller holding the credentials gets the
stream, and it ends with the process."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import threading
import time
from typing import TYPE_CHECKING

import typer

from corral.cli.common import opts
from corral.client import ApiError, Client
from corral.errors import EnvironmentProblem

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

app = typer.Typer()

CHUNK = 65536


@app.command(hidden=True)
def tunnel(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="instance name or id"),
    port: int = typer.Argument(..., min=1, max=65535, help="the guest's TCP port"),
) -> None:
    """Copy stdin to a TCP port of an instance and its answers to stdout, through the API
    (what `corral ssh` uses as ssh's ProxyCommand)."""
    c = opts(ctx).client()
    with c.stream(c.port_url(name, port)) as ws:
        relay(ws, sys.stdin.fileno(), sys.stdout.fileno())


def relay(ws: ClientConnection, in_fd: int, out_fd: int) -> None:
    """Both ways until the guest's side ends (or our reader goes away); the end of ``in_fd``
    is passed on as a half-close (an empty frame)."""
    from websockets.exceptions import ConnectionClosed

    def pump_in() -> None:
        try:
            while data := os.read(in_fd, CHUNK):
                ws.send(data)
            ws.send(b"")
        except (OSError, ConnectionClosed):
            pass

    threading.Thread(target=pump_in, name="tunnel-in", daemon=True).start()
    try:
        for msg in ws:
            _write_all(out_fd, msg if isinstance(msg, bytes) else msg.encode())
    except (ConnectionClosed, BrokenPipeError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def proxy_command(ref: str, port: int) -> str:
    """ssh's ProxyCommand for ``port`` of instance ``ref`` (``%`` is ssh's escape)."""
    argv = [sys.executable, "-m", "corral", "tunnel", ref, str(port)]
    return shlex.join(argv).replace("%", "%%")


def wait_banner(c: Client, ref: str, port: int, timeout: float, prefix: bytes = b"SSH-") -> bool:
    """True once the guest's ``port`` greets with ``prefix`` through the API's stream (the
    guest may still be booting: a port that does not answer yet is tried again)."""
    deadline = time.monotonic() + timeout
    url = c.port_url(ref, port)
    while time.monotonic() < deadline:
        try:
            with c.stream(url) as ws, contextlib.suppress(Exception):
                msg = ws.recv(timeout=3)
                if isinstance(msg, bytes) and msg.startswith(prefix):
                    return True
        except ApiError as err:
            if err.status != 409:  # 409: not running yet, or nothing listens yet
                raise
        except EnvironmentProblem as err:
            # a handshake that timed out (a busy daemon) is tried again; a refused connection
            # (no daemon at all) is not
            if not isinstance(err.__cause__, TimeoutError):
                raise
        time.sleep(0.3)
    return False
