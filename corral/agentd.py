"""`corral agent`: the node agent as its own process, serving the node API (``corral.node.wire``)
on its listen address. In all-in-one mode `corral up` starts it as a child on a unix socket and
restarts it when it dies; the agent dies with the daemon (a parent-death signal), and neither
takes the VMs with it: they run on, and the next agent adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal

from corral.config import Settings
from corral.errors import EnvironmentProblem
from corral.node import server
from corral.node.agent import NodeAgent, check_host

log = logging.getLogger("corral.agent")


def default_listen(settings: Settings) -> str:
    """The agent's socket in all-in-one mode: beside its instances' runtime files."""
    return f"unix:/run/corral/{settings.namespace}/agent.sock"


def _lock(settings: Settings) -> int:
    path = settings.state_dir / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise EnvironmentProblem(
            f"another node agent already runs with state directory {settings.state_dir}"
        ) from err
    return fd


async def run(settings: Settings, listen: str) -> None:
    check_host(settings)
    fd = _lock(settings)
    agent = NodeAgent(settings)
    try:
        await agent.start()
        sock = server.listen(listen)
        srv = server.server(server.create_app(agent))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(srv, "should_exit", True))
        log.info("node agent %s serving %s", settings.hostname, listen)
        await srv.serve(sockets=[sock])
        sock.close()
    finally:
        await agent.close()
        os.close(fd)


def main(settings: Settings, listen: str | None, verbose: bool = False) -> None:
    from corral.daemon import setup_logging

    setup_logging(verbose)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings, listen or default_listen(settings)))
