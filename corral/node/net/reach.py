"""Is a server answering? Health checks from inside Corral's namespace (a TCP connection, or
an HTTP GET), and forgetting a moved address's link-layer entry so packets follow it at once."""

from __future__ import annotations

import asyncio
import contextlib
import os

from corral.node.net import netns
from corral.node.spec import HealthCheck
from corral.proc import arun


async def check(namespace: str, address: str, hc: HealthCheck) -> str:
    """ "" when the server answers as ``hc`` asks, else what went wrong (one attempt)."""
    try:
        sock = await asyncio.to_thread(netns.socket_in, namespace)
    except Exception as err:  # the namespace is gone: not the guest's fault, but not healthy
        return f"no socket in {namespace}: {err}"
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, hc.port)), hc.timeout)
        except (OSError, TimeoutError) as err:
            return f"{address}:{hc.port} does not accept connections ({_why(err)})"
        if hc.path is None:
            return ""
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(
                f"GET {hc.path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), hc.timeout)
        except (OSError, TimeoutError) as err:
            return f"http://{address}:{hc.port}{hc.path} did not answer ({_why(err)})"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = line.decode(errors="replace").split()
        if len(parts) < 2 or not parts[1].isdigit():
            return f"http://{address}:{hc.port}{hc.path} answered {line[:60]!r}, not HTTP"
        if int(parts[1]) >= 400:
            return f"http://{address}:{hc.port}{hc.path} answered {parts[1]}"
        return ""
    finally:
        sock.close()


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


async def forget_neighbour(namespace: str, device: str, address: str) -> None:
    """Drop the namespace's ARP entry for ``address``: the next packet asks who has it now
    (an entry left pointing at a stopped VM's MAC would hold traffic for seconds)."""
    await arun(
        ["ip", "-n", namespace, "neigh", "flush", "to", address, "dev", device],
        check=False,
        timeout=10,
    )
