"""Issue 9 §3: the state directory is 0700 and its files 0600 from the start, older installs
are tightened, `corral doctor`'s audit names what is still open, and an image build alone gets
the umask a guest's files need."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from corral import filemodes
from corral.fsutil import atomic_write

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the modes of root's files")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _old_install(root: Path) -> dict[str, Path]:
    """A state directory as Corral made it before: 0755 folders, 0644 files."""
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    paths = {
        "db": root / "corral.db",
        "disk": root / "instances" / "i-1" / "disk.qcow2",
        "userdata": root / "instances" / "i-1" / "user-data",
        "blob": root / "images" / "blobs" / ("a" * 64),
        "other_owner": root / "instances" / "i-1" / "console.log",
    }
    for p in paths.values():
        p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        p.write_text("x")
        os.chmod(p, 0o644)
    for d in (root / "instances", root / "instances" / "i-1", root / "images"):
        os.chmod(d, 0o755)
    os.chmod(paths["blob"], 0o444)
    os.chown(paths["other_owner"], 65534, 65534)  # e.g. given to a confined QEMU's user
    return paths


def test_an_old_install_is_tightened_and_the_audit_then_finds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "state"
    paths = _old_install(root)
    found = filemodes.audit(root)
    assert any("corral.db" in f for f in found) and any(str(root) in f for f in found)
    assert filemodes.secure_state_dir(root) > 0
    assert _mode(root) == 0o700
    assert _mode(root / "instances") == 0o700 and _mode(root / "instances" / "i-1") == 0o700
    for key in ("db", "disk", "userdata"):
        assert _mode(paths[key]) == 0o600, key
    assert _mode(paths["blob"]) == 0o444  # shared, immutable, behind the 0700 directory
    assert _mode(paths["other_owner"]) == 0o644  # not root's: confinement's business
    assert filemodes.audit(root) == [f"{paths['other_owner']} is 0644"]
    os.chmod(paths["other_owner"], 0o600)
    assert filemodes.audit(root) == []
    assert filemodes.secure_state_dir(root) == 0  # idempotent


def test_a_new_state_directory_is_made_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        filemodes.secure_state_dir(tmp_path / "new" / "state")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new" / "state") == 0o700


def test_state_files_are_written_0600_by_default(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f", "secret")
    assert _mode(tmp_path / "f") == 0o600


async def test_only_the_build_thread_gets_the_guest_umask(tmp_path: Path) -> None:
    old = os.umask(filemodes.DAEMON_UMASK)
    try:

        def make(name: str) -> int:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text("x")
            return os.umask(0o022)  # read it back (and leave it as it was)

        seen = await filemodes.to_thread_with_umask(0o022, make, "guest")
        (tmp_path / "daemon").mkdir()
        (tmp_path / "daemon" / "f").write_text("x")
        # the pool threads keep the daemon's umask
        await asyncio.to_thread((tmp_path / "pool").write_text, "x")
        with pytest.raises(ZeroDivisionError):
            await filemodes.to_thread_with_umask(0o022, lambda: 1 // 0)
    finally:
        os.umask(old)
    assert seen == 0o022
    assert _mode(tmp_path / "guest") == 0o755 and _mode(tmp_path / "guest" / "f") == 0o644
    assert _mode(tmp_path / "daemon") == 0o700 and _mode(tmp_path / "daemon" / "f") == 0o600
    assert _mode(tmp_path / "pool") == 0o600
