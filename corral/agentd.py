"""`corral agent`: the node agent as its own process, serving the node API (``corral.node.wire``)
on its listen address. In all-in-one mode `corral up` starts it as a child on a unix socket and
restarts it when it dies; the agent dies with the daemon (a parent-death signal), and neither
takes the VMs with it: they run on, and the next agent adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import ssl
from pathlib import Path
from typing import Any

from corral.config import Settings
from corral.errors import EnvironmentProblem
from corral.node import server
from corral.node.agent import NodeAgent, check_host

log = logging.getLogger("corral.agent")


def default_listen(settings: Settings) -> str:
    """The agent's socket in all-in-one mode: beside its instances' runtime files; a node that
    joined a cluster: the address it joined with."""
    joined = joined_state(settings.state_dir)
    if joined is not None:
        return str(joined["address"])
    return f"unix:/run/corral/{settings.namespace}/agent.sock"


# -- a node that joined a cluster (`corral node join`) ----------------------------------------
def node_file(state_dir: Path) -> Path:
    return state_dir / "node.json"


def pki_dir(state_dir: Path) -> Path:
    return state_dir / "pki"


def joined_state(state_dir: Path) -> dict[str, Any] | None:
    """What `corral node join` kept: controller, name, address, zone, labels; None if never."""
    try:
        data = json.loads(node_file(state_dir).read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise EnvironmentProblem(
            f"{node_file(state_dir)} is not valid JSON; join again with `corral node join`"
        ) from err
    return data if isinstance(data, dict) else None


def tls_settings(state_dir: Path) -> dict[str, Any]:
    """uvicorn's TLS for a joined agent: its own certificate, and client certificates required
    from the cluster CA (issued for client use: the controller's, never another node's)."""
    d = pki_dir(state_dir)
    files = {
        "ssl_keyfile": d / "node.key",
        "ssl_certfile": d / "node.crt",
        "ssl_ca_certs": d / "ca.crt",
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise EnvironmentProblem(
            f"this node has no cluster certificate ({', '.join(missing)} missing); "
            "join it with `corral node join URL --token T`"
        )
    return {k: str(v) for k, v in files.items()} | {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def joined_settings(settings: Settings, joined: dict[str, Any]) -> Settings:
    """A joined node's own settings: live migrations to and from it cross the underlay on the
    address it joined with, unless its ``migration_address`` says otherwise (the default,
    loopback, would send another node's migration to itself)."""
    if settings.migration_address == Settings.migration_address:
        host = str(joined["address"]).removeprefix("https://").rpartition(":")[0].strip("[]")
        if host:
            return dataclasses.replace(settings, migration_address=host)
    return settings


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
    # a joined node answers its guests' metadata itself (from the documents pushed to it)
    agent = NodeAgent(settings, serve_metadata=joined_state(settings.state_dir) is not None)
    try:
        await agent.start()
        tls = tls_settings(settings.state_dir) if listen.startswith("https://") else None
        sock = server.listen(listen)
        if listen.startswith("https://"):  # a joined node: its peers' hellos (node/fence.py)
            await agent.fence.listen(listen.removeprefix("https://"))
        srv = server.server(server.create_app(agent), tls)
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
    joined = joined_state(settings.state_dir)
    if joined is not None and not settings.node_name:
        # the agent's own settings: the name it joined with
        settings = dataclasses.replace(settings, node_name=str(joined["name"]))
    if joined is not None:
        settings = joined_settings(settings, joined)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings, listen or default_listen(settings)))
