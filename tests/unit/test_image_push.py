"""An image reaches a node on first use over the wire: only the parts the node lacks are sent,
each checked by sha256 on arrival; a part that arrives different is not kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node.fake import FakeNode


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    """The fake node with an image store of its own (empty), as a joined node has."""
    return FakeNode(images=ImageStore(tmp_path / "node-images"))


async def test_an_image_is_pulled_once_and_verified(ctrl: Controller, node: FakeNode) -> None:
    assert node.images is not None
    manifest = ctrl.image_store.list()[0]
    assert not node.images.has(manifest.digest)
    await ctrl.image_push.ensure("node-n1", manifest.digest)
    assert node.images.has(manifest.digest)
    for blob in manifest.blobs():
        node.images.verify_blob(blob)  # the same bytes (sha256 checked)
    sent = len(ctrl.image_push.sent)
    assert sent == len({b.sha256 for b in manifest.blobs()})
    await ctrl.image_push.ensure("node-n1", manifest.digest)
    assert len(ctrl.image_push.sent) == sent  # present: nothing sent again


async def test_a_part_that_arrives_different_is_not_kept(ctrl: Controller, node: FakeNode) -> None:
    assert node.images is not None
    claimed = "0" * 64
    reader, writer = await ctrl.node("node-n1").image_blob_put(claimed)
    writer.write(b"not the bytes of that digest")
    writer.write_eof()
    answer = (await reader.read()).decode()
    writer.close()
    assert answer.startswith("error:") and "not kept" in answer
    assert not node.images.blob_path(claimed).exists()
    assert list(node.images.tmp.iterdir()) == []
