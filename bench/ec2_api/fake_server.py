"""Corral's API (EC2 and REST) over fake nodes, on 127.0.0.1, for benchmarks that need more
instances than this machine can boot. Labelled "fake node" wherever its figures appear.

The controller runs as the daemon's does: the reconciler at its normal interval (the settings'
default), and nodes the size of this machine (its CPUs and memory each), as many as the
instances need (``--nodes``), so placement works as it would on a real cluster of such hosts.

    python -m bench.ec2_api.fake_server --port 18773 --state /tmp/x [--nodes 6] [--wire]
        [--db postgresql://USER@/DB?host=SOCKETDIR]

``--db`` puts the controller on that database, built from the URL as ``corral up --db`` builds
it (PostgreSQL through psycopg 3, async); the default is SQLite in the state directory.

With ``--wire`` the fake nodes are not Python objects in this process: they run in a process of
their own behind the agent's real server on unix sockets (bench/ec2_api/fake_nodes.py), and the
controller reaches them through the real node client, as it reaches a real agent.

Prints the admin key as JSON on its first line, then serves until SIGINT/SIGTERM (or until the
process that started it is gone); on the way out writes STATE/stats.json (reconcile passes,
interval, nodes, database)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.engine import make_url

from corral import config
from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller.service import Controller
from corral.daemon import GC_THRESHOLDS
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.node.remote import RemoteNode, connect_node
from corral.node.spec import NodeInfo
from corral.store import Store


def _image(images: ImageStore, tmp: Path) -> Manifest:
    blobs = {}
    for part in ("kernel", "initrd", "root"):
        f = tmp / f"bench-{part}"
        f.write_bytes(part.encode())
        blobs[part] = images.add_blob(
            f,
            fmt="qcow2" if part == "root" else "raw",
            virtual_size=512 << 20 if part == "root" else None,
        )
    m = Manifest(
        name="tiny",
        kernel=blobs["kernel"],
        initrd=blobs["initrd"],
        root_disk=blobs["root"],
        min_disk=512 << 20,
    )
    images.put_manifest(m)
    return m


class _Timed:
    """Appends each request's time inside the server (ms) to a file: separates the server's
    own time from the client's and the machine's."""

    def __init__(self, app: Any, path: Path) -> None:
        self.app, self.fh = app, open(path, "a", buffering=1)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        t0 = time.perf_counter()
        await self.app(scope, receive, send)
        self.fh.write(f"{(time.perf_counter() - t0) * 1000:.3f}\n")


def host_size() -> tuple[int, int]:
    """This machine's CPUs and memory (bytes): the size every fake node claims."""
    with open("/proc/meminfo") as fh:
        kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal:"))
    return os.cpu_count() or 1, kib << 10


def _start_wired_nodes(
    state: Path, images: Path, nodes: int
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """The fake nodes in their own process, behind the agent's server: their URLs."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.ec2_api.fake_nodes",
            "--sockets",
            str(state / "nodes"),
            "--images",
            str(images),
            "--count",
            str(nodes),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise SystemExit(f"the fake nodes' process ended (exit {proc.returncode}) before serving")
    urls: list[str] = json.loads(line)["nodes"]
    return proc, urls


def argv(
    port: int,
    state: Path,
    timings: Path | None = None,
    nodes: int = 1,
    wire: bool = False,
    db: str | None = None,
) -> list[str]:
    """The command line that starts this fake server (run from the repository's root)."""
    return [
        sys.executable,
        "-m",
        "bench.ec2_api.fake_server",
        "--port",
        str(port),
        "--state",
        str(state),
        *(["--timings", str(timings)] if timings is not None else []),
        "--nodes",
        str(nodes),
        *(["--wire"] if wire else []),
        *(["--db", db] if db else []),
    ]


def bench_settings(state: Path, port: int, db: str | None = None) -> config.Settings:
    """The daemon's settings for this state dir, on ``db`` when given (validated as
    ``corral up --db`` validates it), else SQLite in the state directory. The admin account's
    instance, vCPU and memory quotas are lifted: a benchmark launches 1,000 instances."""
    return config.load(
        state,
        api_port=port,
        subnet="10.251.0.0/20",
        quota_instances=-1,
        quota_vcpus=-1,
        quota_memory_mib=-1,
        **({"db_url": db} if db else {}),
    )


async def _orphaned(server: uvicorn.Server) -> None:
    """Stop serving once the process that started this one is gone (killed by -9), so a
    benchmark's servers never outlive it."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1)
    server.should_exit = True


async def main(
    port: int,
    state: Path,
    nodes: int,
    timings: Path | None = None,
    wire: bool = False,
    db: str | None = None,
) -> None:
    # SIGINT/SIGTERM only ask to stop: the clean-up below (the nodes' process, stats.json)
    # always runs. Not asyncio's SIGINT handler (it cancels the clean-up's own awaits) nor the
    # default SIGTERM (it ends the process there), both of which uvicorn re-raises after serving.
    server: uvicorn.Server | None = None
    stopping = False

    def ask_stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, ask_stop)
    state.mkdir(parents=True, exist_ok=True)
    settings = bench_settings(state, port, db)
    store = Store(settings.database_url)
    await asyncio.to_thread(store.migrate)
    images = ImageStore(settings.images_dir)
    _image(images, state)
    cpus, memory = host_size()
    ctrl = Controller(settings, store, images)
    wired: subprocess.Popen[bytes] | None = None
    owners: list[RemoteNode] = []
    try:
        if wire:
            wired, urls = _start_wired_nodes(state, settings.images_dir, nodes)
            for i, url in enumerate(urls):
                client, owner = connect_node(url)
                owners.append(owner)
                await ctrl.add_node(client, f"fake{i}")
        for i in range(0 if wire else nodes):
            node = FakeNode(name=f"fake{i}", images=images)
            info = await node.info()
            node.info = functools.partial(_sized, info, cpus, memory)  # type: ignore[method-assign]
            await ctrl.add_node(node, f"fake{i}")  # type: ignore[arg-type]
        await ctrl.start()
        assert ctrl.admin is not None
        print(
            json.dumps(
                {
                    "access_key_id": ctrl.admin.access_key_id,
                    "secret_access_key": ctrl.accounts.secret_for(ctrl.admin.access_key_id),
                }
            ),
            flush=True,
        )
        gc.collect()
        gc.freeze()  # as the daemon does after start-up
        gc.set_threshold(*GC_THRESHOLDS)
        app: Any = create_app(ApiContext(settings, ctrl))
        if timings is not None:
            app = _Timed(app, timings)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="off",
                log_level="warning",
                access_log=False,
            )
        )
        watch = asyncio.create_task(_orphaned(server))
        if not stopping:  # asked to stop during start-up
            await server.serve()
        watch.cancel()
    finally:
        # its followers' long polls end before their clients close; after a failed start-up
        # too (add_node may have started them)
        with contextlib.suppress(Exception):
            await ctrl.close()
        for owner in owners:
            await owner.aclose()
        if wired is not None:
            wired.terminate()
            wired.wait(30)
        await store.close()
        (state / "stats.json").write_text(
            json.dumps(
                {
                    "reconcile_interval_s": settings.reconcile_interval,
                    "reconcile_passes": ctrl.reconciler.passes,
                    "nodes": nodes,
                    "wire": wire,
                    "node_cpus": cpus,
                    "node_memory": memory,
                    "database": make_url(store.url).get_backend_name(),
                }
            )
        )


async def _sized(info: NodeInfo, cpus: int, memory: int) -> NodeInfo:
    return info.model_copy(update={"memory": memory, "cpus": cpus})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--timings", type=Path, help="append each request's server time (ms)")
    ap.add_argument("--nodes", type=int, default=1, help="fake nodes, each this machine's size")
    ap.add_argument(
        "--wire", action="store_true", help="the fake nodes in their own process, over the wire"
    )
    ap.add_argument(
        "--db",
        help="database URL (postgresql://USER@HOST/DB or sqlite+aiosqlite:///PATH); "
        "default: SQLite in the state directory",
    )
    a = ap.parse_args()
    asyncio.run(main(a.port, a.state, a.nodes, a.timings, a.wire, a.db))
