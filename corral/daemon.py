"""`corral up`: the all-in-one daemon. API server and controller on SQLite under the state
directory, and one node agent as a child process (`corral agent`) that the controller reaches
only over the node wire, on a unix socket. The daemon restarts the agent when it dies; the
agent dies with the daemon. Stopping either leaves instances running; the next agent re-adopts
them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import uvicorn

from corral import agentd, filemodes, imds
from corral.api import metadata
from corral.api.app import VERSION, create_app
from corral.api.context import ApiContext
from corral.config import Settings
from corral.controller.service import Controller
from corral.errors import EnvironmentProblem
from corral.fsutil import atomic_write
from corral.images.store import ImageStore
from corral.node.agent import METADATA_ADDRESS, check_host
from corral.node.client import NodeClient
from corral.node.net import netns
from corral.node.remote import RemoteNode, connect_node
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
        # a controller of a cluster may run no node of its own (`corral up --no-local-node`)
        agent = AgentProcess(st) if st.local_node else None
        remote: RemoteNode | None = None
        node: NodeClient | None = None
        ctrl: Controller | None = None
        try:
            await asyncio.to_thread(store.migrate)
            ctrl = Controller(st, store, ImageStore(st.images_dir))
            ctrl.cluster.connector = connect_node  # joined nodes: https:// with mutual TLS
            if agent is not None:
                await agent.start()
                node, remote = connect_node(agent.url)
                await ctrl.add_node(node, st.hostname)
            await ctrl.start()
            # what start-up made lives as long as the process: keep it out of the collector's
            # full passes, which otherwise stall large API answers (a p99 of 150 ms, not 40)
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            app = create_app(ApiContext(st, ctrl, shutdown=self.request_shutdown, version=VERSION))
            tls: tuple[Path, Path] | None = None
            if st.api_tls:  # beyond loopback: HTTPS with a certificate from the cluster's CA
                hosts = [st.api_host, st.hostname, "127.0.0.1", "localhost"]
                tls = ctrl.cluster.ca.own("api", "corral-api", hosts, "server")
            tasks = [self._serve(app, [api_sock], "api", tls)]
            key = imds.token_key(st.state_dir / "metadata.key")
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
                (await node.info()).accel.accel if node is not None else "none (no local node)",
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
            if remote is not None:
                seen = cast(NodeClient, remote)
                with contextlib.suppress(Exception):
                    if self.stop_instances and not any(o.running for o in await seen.instances()):
                        await seen.teardown()  # nothing runs: leave the host clean
                await remote.aclose()
            if agent is not None:
                await agent.stop()
            await store.close()
            st.pidfile.unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    async def _serve(
        self,
        app: Any,
        sockets: list[socket.socket],
        name: str,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            ssl_keyfile=str(tls[0]) if tls else None,
            ssl_certfile=str(tls[1]) if tls else None,
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        self.servers.append(server)
        await server.serve(sockets=sockets)


class AgentProcess:
    """The node agent as a child process: started, waited for until it answers, restarted
    when it dies. It gets a parent-death signal, so a daemon killed with SIGKILL does not leave
    it behind (its VMs stay; the next agent adopts them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = agentd.default_listen(settings)
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def argv(self) -> list[str]:
        st = self.settings
        return [
            sys.executable,
            "-m",
            "corral",
            "--state-dir",
            str(st.state_dir),
            "agent",
            "--listen",
            self.url,
            "--accel",
            st.accel,
        ]

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's ^C is the daemon's to handle
            preexec_fn=_die_with_parent,
        )
        log.info("node agent started (pid %d)", self.proc.pid)

    async def start(self, timeout: float = 120) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="agent-supervisor")
        deadline = time.monotonic() + timeout
        uds = self.url[len("unix:") :]
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=uds)) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("http://node/v1/version", timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise EnvironmentProblem(
            f"the node agent did not answer on {self.url} within {timeout:.0f} s; see the log above"
        )

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            assert self.proc is not None
            started = time.monotonic()
            code = await self.proc.wait()
            if self._stopping:
                return
            log.warning("the node agent exited (%s); restarting it", code)
            delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, 10.0)
            await asyncio.sleep(delay)
            self.restarts += 1
            await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the daemon dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # it logs every connect retry
    for noisy in ("uvicorn.error", "aiosqlite", "sqlalchemy", "alembic", "websockets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").addFilter(_denial_is_not_an_error)


def _denial_is_not_an_error(record: logging.LogRecord) -> bool:
    """uvicorn's sans-io WebSocket protocol logs an error after every denial response (a stream
    refused with 401/404/409 before its handshake, as ``api/rest/instances.py`` does), although
    the client got its answer: drop just that line."""
    return record.getMessage() != "ASGI callable returned without completing handshake."


def main(settings: Settings, verbose: bool = False) -> None:
    # everything the daemon (and what it starts) creates is its own: 0600 files, 0700 folders
    os.umask(filemodes.DAEMON_UMASK)
    setup_logging(verbose)
    changed = filemodes.secure_state_dir(settings.state_dir)
    if changed:
        log.warning(
            "state directory %s: took group and other access away from %d entries "
            "(made before the daemon ran, or by an older Corral)",
            settings.state_dir,
            changed,
        )
    asyncio.run(Daemon(settings).run())
