"""`corral up`: the all-in-one daemon. API server, controller and one node agent in one
process on SQLite under the state directory. Stopping it leaves instances running; the next
start re-adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from corral.api import metadata
from corral.api.app import VERSION, create_app
from corral.api.context import ApiContext
from corral.config import Settings
from corral.controller.service import Controller
from corral.errors import EnvironmentProblem
from corral.fsutil import atomic_write
from corral.node.agent import METADATA_ADDRESS, NodeAgent, check_host
from corral.node.net import netns
from corral.store import Store

log = logging.getLogger("corral")

# A large API answer keeps tens of thousands of small objects alive for a few milliseconds;
# with Python's default first threshold (700) they are promoted and full collections of the
# whole heap follow (100-300 ms pauses at 1000 instances, measured by bench/ec2_api). Almost
# all of it is freed by reference counting, so collect the young generation far less often.
GC_THRESHOLDS = (50_000, 20, 20)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.stop_instances = False
        self.stop_timeout: float | None = None
        self.servers: list[_Server] = []
        self._lock_fd: int | None = None

    def _acquire_lock(self) -> None:
        path = self.settings.state_dir / "corral.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            pidfile = self.settings.pidfile
            pid = pidfile.read_text().strip() if pidfile.exists() else "?"
            raise EnvironmentProblem(
                f"another Corral (pid {pid}) already runs with state directory "
                f"{self.settings.state_dir}; stop it with `corral down` or use --state-dir"
            ) from err
        self._lock_fd = fd

    def _bind_api(self) -> socket.socket:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
        # without it every keep-alive answer waited ~40 ms for the client's delayed ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.api_host, self.settings.api_port))
        except OSError as err:
            sock.close()
            raise EnvironmentProblem(
                f"cannot listen on {self.settings.api_host}:{self.settings.api_port} "
                f"({err.strerror}); is another Corral running? choose another with --port"
            ) from err
        sock.listen(512)
        sock.setblocking(False)
        return sock

    async def request_shutdown(
        self, stop_instances: bool = False, timeout: float | None = None
    ) -> None:
        self.stop_instances = stop_instances
        self.stop_timeout = timeout
        self.stop_event.set()

    async def run(self) -> None:
        st = self.settings
        check_host(st)
        self._acquire_lock()
        api_sock = self._bind_api()
        atomic_write(st.pidfile, f"{os.getpid()}\n")
        store = Store(st.database_url)
        agent: NodeAgent | None = None
        ctrl: Controller | None = None
        try:
            await asyncio.to_thread(store.migrate)
            agent = NodeAgent(st)
            await agent.start()
            ctrl = Controller(st, store, agent.images)
            await ctrl.add_node(agent, st.hostname)
            await ctrl.start()
            # what start-up made lives as long as the process: keep it out of the collector's
            # full passes, which otherwise stall large API answers (a p99 of 150 ms, not 40)
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            app = create_app(ApiContext(st, ctrl, shutdown=self.request_shutdown, version=VERSION))
            tasks = [self._serve(app, [api_sock], "api")]
            key = _metadata_key(st.state_dir / "metadata.key")
            for network in await ctrl.networks.by_namespace(st.namespace):
                sock = netns.listen_in(network.namespace, METADATA_ADDRESS, 80)
                tasks.append(
                    self._serve(metadata.create_app(ctrl, network.id, key), [sock], "metadata")
                )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop_event.set)
            log.info(
                "Corral %s up: API %s, state %s, namespace %s, accelerator %s",
                VERSION,
                st.api_url,
                st.state_dir,
                st.namespace,
                (await agent.accel()).accel,
            )
            server_tasks = [asyncio.create_task(t) for t in tasks]
            stopper = asyncio.create_task(self.stop_event.wait())
            done, _ = await asyncio.wait(
                [stopper, *server_tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t is not stopper and t.exception() is not None:
                    log.error("a server stopped: %s", t.exception())
            log.info(
                "shutting down%s",
                " (stopping instances)" if self.stop_instances else "; instances keep running",
            )
            for server in self.servers:
                server.should_exit = True
            await asyncio.wait(server_tasks, timeout=10)
            stopper.cancel()
        finally:
            if ctrl is not None:
                if self.stop_instances:
                    with contextlib.suppress(Exception):
                        await ctrl.stop_all(self.stop_timeout)
                await ctrl.close()
            if agent is not None:
                if self.stop_instances and not any(o.running for o in await agent.instances()):
                    await agent.teardown()  # nothing runs: leave the host clean
                await agent.close()
            await store.close()
            st.pidfile.unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    async def _serve(self, app: Any, sockets: list[socket.socket], name: str) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        self.servers.append(server)
        await server.serve(sockets=sockets)


def _metadata_key(path: Path) -> bytes:
    """The key IMDSv2 tokens are signed with, kept so tokens outlive a restart."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    atomic_write(path, key, 0o600)
    return key


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # it logs every connect retry
    for noisy in ("uvicorn.error", "aiosqlite", "sqlalchemy", "alembic", "websockets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(settings: Settings, verbose: bool = False) -> None:
    setup_logging(verbose)
    asyncio.run(Daemon(settings).run())
