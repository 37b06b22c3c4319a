"""An image reaches a node on first use: the controller asks the node which of the image's
manifests (the image and those it is built on) and parts it lacks, streams only those parts
(the node checks each sha256 as it arrives) and then the manifests, base first. A node that
shares the controller's image store (all-in-one) lacks nothing, and nothing is sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from corral.errors import EnvironmentProblem
from corral.node.spec import IMAGE_PART_KEPT as OK

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class ImagePush:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.sent: list[tuple[str, str]] = []  # (node id, sha256) of parts sent, newest last

    async def ensure(self, node_id: str | None, digest: str) -> None:
        """Make image ``digest`` present on the node (one push per node and image at once)."""
        if node_id is None:
            return
        lock = self._locks.setdefault((node_id, digest), asyncio.Lock())
        async with lock:
            await self._ensure(node_id, digest)

    async def _ensure(self, node_id: str, digest: str) -> None:
        node = self.ctrl.node(node_id)
        if not await node.image_missing([digest], []):
            return
        store = self.ctrl.image_store
        chain = await asyncio.to_thread(store.chain, digest)  # nearest first
        parts = list(dict.fromkeys(b.sha256 for m in chain for b in m.blobs()))
        lacking = set(await node.image_missing([m.digest for m in chain], parts))
        for sha in parts:
            if sha in lacking:
                await self._send(node_id, sha)
        for m in reversed(chain):  # base first: a manifest needs its base there
            if m.digest in lacking:
                await node.image_manifest_put(m.digest, m.canonical().decode())
        log.info(
            "image %s:%s pulled to node %s (%d of %d parts sent)",
            chain[0].name, chain[0].version, node_id, len(lacking & set(parts)), len(parts),
        )  # fmt: skip

    async def _send(self, node_id: str, sha256: str) -> None:
        path = self.ctrl.image_store.blob_path(sha256)
        reader, writer = await self.ctrl.node(node_id).image_blob_put(sha256)
        try:
            with open(path, "rb") as fh:
                while data := await asyncio.to_thread(fh.read, CHUNK):
                    writer.write(data)
                    await writer.drain()
            writer.write_eof()
            answer = (await asyncio.wait_for(reader.read(4096), 600)).strip()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if answer != OK + sha256.encode():
            raise EnvironmentProblem(
                f"node {node_id} did not keep image part {sha256[:12]}: "
                f"{answer.decode(errors='replace') or 'the stream ended'}"
            )
        self.sent.append((node_id, sha256))
