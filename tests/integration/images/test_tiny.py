"""The tiny recipe: the same recipe and package versions give the same image (its initramfs
and disk are made without host inode numbers or times)."""

from __future__ import annotations

from tests.harness import Daemon
from tests.integration.images.conftest import image


def test_tiny_rebuilt_is_the_same_image(corral: Daemon) -> None:
    before = image(corral, "tiny")
    corral.cli("image", "build", "tiny", "--force", timeout=900).ok()
    after = image(corral, "tiny")
    assert after["digest"] == before["digest"] and after["id"] == before["id"]
    assert after["manifest"]["initrd"] == before["manifest"]["initrd"]
