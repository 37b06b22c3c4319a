"""A node's side of getting an image it lacks: the controller asks which manifests and parts
(blobs) are missing, streams each missing part (only those: an image built on another sends
just its own delta), and the node hashes it as it arrives, keeps it only when the sha256 is the
one asked for, then stores the manifests base first. Shared by the agent and the fake node."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket

from corral.errors import CorralError, Invalid
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.node.spec import IMAGE_PART_KEPT

log = logging.getLogger(__name__)

CHUNK = 1 << 20
OK = IMAGE_PART_KEPT


def missing(store: ImageStore, manifests: list[str], blobs: list[str]) -> list[str]:
    """Of these manifest and blob digests, the ones this store lacks."""
    out = [d for d in manifests if not store.has(d)]
    out += [b for b in blobs if not store.blob_path(b).exists()]
    return out


def put_manifest(store: ImageStore, digest: str, manifest: str) -> None:
    m = Manifest.model_validate_json(manifest)
    if m.digest != digest:
        raise Invalid(
            f"image manifest: its digest is {m.digest}, the controller named {digest}",
            field="manifest",
        )
    store.put_manifest(m)


async def receive_blob(
    store: ImageStore, sha256: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream the part's bytes are written to; once the sender half-closes it, the node
    answers ``ok <sha256>`` (kept) or ``error: …`` (refused), and closes."""
    store.blob_path(sha256)  # a sha256, or Invalid
    store.ensure()
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    task = asyncio.create_task(_receive(store, sha256, ours), name=f"blob-{sha256[:12]}")
    _RECEIVING.add(task)
    task.add_done_callback(_RECEIVING.discard)
    return reader, writer


_RECEIVING: set[asyncio.Task[None]] = set()


async def _receive(store: ImageStore, sha256: str, sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    tmp = store.tmp / f"pull-{sha256}.{os.getpid()}.{id(sock)}"
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as fh:
            while data := await reader.read(CHUNK):
                h.update(data)
                fh.write(data)
        got = h.hexdigest()
        if got != sha256:
            answer = (
                f"error: image part {sha256[:12]} arrived as sha256 {got[:12]}: corrupt on the "
                "way; it was not kept"
            ).encode()
        else:
            await asyncio.to_thread(
                store.add_blob, tmp, move=True, expect_sha256=sha256, known_sha256=got
            )
            answer = OK + sha256.encode()
    except (OSError, CorralError) as err:
        answer = f"error: {err}".encode()
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    try:
        writer.write(answer + b"\n")
        await writer.drain()
    finally:
        writer.close()
