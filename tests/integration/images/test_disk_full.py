"""A full disk during a build or an import: a clear error, nothing half-written, the images
already there intact. The image store sits on a small tmpfs made (and removed) for the test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.images.recipe import BUILTIN
from tests.harness import Daemon, new_daemon

SIZE_MIB = 256


@pytest.fixture(scope="module")
def small() -> Iterator[Daemon]:
    d = new_daemon()
    images = d.state_dir / "images"
    images.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "corral-test-full", str(images)],
        check=True,
    )
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        yield d
    finally:
        d.stop(stop_instances=True)
        subprocess.run(["umount", "-l", str(images)], check=False)
        d.teardown()


def _leftovers(d: Daemon) -> list[str]:
    tmp = d.state_dir / "images" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def test_a_build_that_fills_the_disk_fails_clearly_and_leaves_nothing(
    small: Daemon, tmp_path: Path
) -> None:
    # a recipe is uploaded (never read from a server path), so it stays small: the store is
    # filled up to its last MiB beforehand instead, and a new build needs more than that
    recipe = tmp_path / "fat"
    shutil.copytree(BUILTIN / "tiny", recipe)
    text = (recipe / "recipe.toml").read_text().replace('name = "tiny"', 'name = "fat"')
    (recipe / "recipe.toml").write_text(text + '\n[files]\n"/srv/ballast" = "ballast"\n')
    with open(recipe / "ballast", "wb") as fh:
        fh.write(os.urandom(256 << 10))
    before = sorted(p.name for p in (small.state_dir / "images/blobs").iterdir())
    filler = small.state_dir / "images" / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, shutil.disk_usage(filler.parent).free - (1 << 20))
        finally:
            os.close(fd)
        res = small.cli("image", "build", str(recipe), timeout=900)
    finally:
        filler.unlink()
    assert res.rc != 0
    assert "is full" in res.err and "nothing was kept" in res.err, res.err
    assert _leftovers(small) == []
    assert sorted(p.name for p in (small.state_dir / "images/blobs").iterdir()) == before
    assert "fat" not in small.cli("image", "ls").ok().out
    small.cli("image", "verify", "tiny").ok()


def test_an_import_that_does_not_fit_fails_clearly_and_leaves_nothing(
    small: Daemon, tmp_path: Path
) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as fh:
        for _ in range(SIZE_MIB + 16):
            fh.write(os.urandom(1 << 20))
    res = small.cli("image", "import", str(big), "--name", "big", timeout=300)
    assert res.rc != 0 and "free" in res.err and "nothing was kept" in res.err, res.err
    assert _leftovers(small) == []
    small.cli("image", "verify", "tiny").ok()
    # the daemon is fine afterwards: a small import still works
    ok = tmp_path / "small.raw"
    with open(ok, "wb") as fh:
        fh.truncate(8 << 20)
    small.cli("image", "import", str(ok), "--name", "small").ok()
    small.cli("image", "rm", "small").ok()
