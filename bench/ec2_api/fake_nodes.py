"""Fake nodes behind the real node wire: COUNT fake hypervisors (corral/node/fake.py: no VMs),
each served by the agent's own server (corral/node/server.py) on its own unix socket, all in
this one process, apart from the controller's. The controller reaches them as it reaches a real
agent (corral/node/remote.py: HTTP over the socket, the event stream followed by long polls), so
a benchmark over these nodes pays for the wire, the serialisation and the process boundary; only
the hypervisor is fake. Labelled "fake node over the wire" wherever its figures appear.

    python -m bench.ec2_api.fake_nodes --sockets DIR --images DIR --count N

Each node is this machine's size. Prints one JSON line (the nodes' URLs) once all serve, then
serves until SIGINT/SIGTERM or until its parent is gone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

from bench.ec2_api.fake_server import host_size
from corral.images.store import ImageStore
from corral.node import server
from corral.node.fake import FakeNode


async def main(sockets: Path, images_dir: Path, count: int) -> None:
    sockets.mkdir(parents=True, exist_ok=True)
    images = ImageStore(images_dir)
    cpus, memory = host_size()
    servers: list[server.Server] = []
    tasks: list[asyncio.Task[None]] = []
    urls: list[str] = []
    for i in range(count):
        node = FakeNode(name=f"fake{i}", images=images, cpus=cpus, memory=memory)
        path = sockets / f"fake{i}.sock"
        srv = server.server(server.create_app(node))
        servers.append(srv)
        tasks.append(asyncio.create_task(srv.serve(sockets=[server.bind_unix(path)])))
        urls.append(f"unix:{path}")
    while not all(s.started for s in servers):
        for t in tasks:
            if t.done():
                t.result()  # a server that failed to start: say why
        await asyncio.sleep(0.01)

    def stop() -> None:
        for s in servers:
            s.should_exit = True
            s.force_exit = True  # a follower's long poll may still be open: do not wait for it

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    async def orphaned(parent: int) -> None:
        """The controller's process gone (killed by -9): stop, never outlive it."""
        while os.getppid() == parent:
            await asyncio.sleep(1)
        stop()

    watch = asyncio.create_task(orphaned(os.getppid()))
    print(json.dumps({"nodes": urls}), flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks)
    watch.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--count", type=int, required=True)
    a = ap.parse_args()
    asyncio.run(main(a.sockets, a.images, a.count))
