"""Corral's API (EC2 and REST) over a fake node, on 127.0.0.1, for benchmarks that need more
instances than this machine can boot. Labelled "fake node" wherever its figures appear.

    python -m bench.ec2_api.fake_server --port 18773 --state /tmp/x

Prints the admin key as JSON on its first line, then serves until killed."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from pathlib import Path

import uvicorn

from corral import config
from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller.service import Controller
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.store import Store


def _image(images: ImageStore, tmp: Path) -> Manifest:
    blobs = {}
    for part in ("kernel", "initrd", "root"):
        f = tmp / f"bench-{part}"
        f.write_bytes(part.encode())
        blobs[part] = images.add_blob(f, fmt="qcow2" if part == "root" else "raw",
                                      virtual_size=512 << 20 if part == "root" else None)
    m = Manifest(name="tiny", kernel=blobs["kernel"], initrd=blobs["initrd"],
                 root_disk=blobs["root"], min_disk=512 << 20)
    images.put_manifest(m)
    return m


async def main(port: int, state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before serving)
    settings = config.load(state, api_port=port, subnet="10.251.0.0/20",
                           reconcile_interval=3600)
    store = Store(settings.database_url)
    await asyncio.to_thread(store.migrate)
    images = ImageStore(settings.images_dir)
    _image(images, state)
    node = FakeNode(images=images)
    info = await node.info()
    node.info = lambda: _big(info)  # type: ignore[method-assign]
    ctrl = Controller(settings, store, images)
    await ctrl.add_node(node, "fake")  # type: ignore[arg-type]
    await ctrl.start()
    assert ctrl.admin is not None
    print(json.dumps({"access_key_id": ctrl.admin.access_key_id,
                      "secret_access_key": ctrl.accounts.secret_for(ctrl.admin.access_key_id)}),
          flush=True)
    gc.collect()
    gc.freeze()  # as the daemon does after start-up
    app = create_app(ApiContext(settings, ctrl))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))
    await server.serve()


async def _big(info):  # type: ignore[no-untyped-def]
    return info.model_copy(update={"memory": 1 << 40, "cpus": 64})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--state", type=Path, required=True)
    a = ap.parse_args()
    try:
        asyncio.run(main(a.port, a.state))
    except KeyboardInterrupt:
        sys.exit(0)
