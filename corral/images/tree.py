"""Tidying an image's root tree before it becomes a disk: remove what is unique per build or per
machine, fix time stamps, read what is installed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from corral.errors import CorralError
from corral.proc import run


def remove_globs(root: Path, patterns: list[str]) -> None:
    """Remove what ``patterns`` match below ``root``; under var/log only files (the
    directories belong to packages)."""
    for pattern in patterns:
        for path in sorted(root.glob(pattern), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir() and not pattern.startswith("var/log"):
                shutil.rmtree(path)


def normalize_shadow(root: Path, epoch: int) -> None:
    """Set the "last password change" day of every account to the build's epoch (useradd
    writes today's date)."""
    path = root / "etc/shadow"
    if not path.exists():
        return
    day = str(epoch // 86400)
    lines = []
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            fields[2] = day
        lines.append(":".join(fields))
    mode = path.stat().st_mode & 0o777
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)


def clamp_times(root: Path, epoch: int) -> None:
    """Every access time, and every modification time newer than ``epoch``, set to ``epoch``
    (older ones come from the packages and stay: Python's bytecode checks them)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            mtime = min(int(st.st_mtime), epoch)
            os.utime(path, (mtime, mtime), follow_symlinks=False)


def installed_packages(root: Path, pattern: str = "*") -> dict[str, str]:
    """Installed Debian packages in the tree and their versions (dpkg's own database)."""
    out = run(
        [
            "dpkg-query",
            f"--admindir={root}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\n",
            pattern,
        ],
        check=False,
    )
    found = {}
    for line in out.splitlines():
        status, _, rest = line.partition("\t")
        name, _, version = rest.partition("\t")
        if status.startswith("ii"):
            found[name] = version
    return found


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        return [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]


@contextlib.contextmanager
def build_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A staging directory for a build that mounts things below it: on the way out, whatever is
    still mounted is unmounted, and the directory is removed only when nothing is (removing a
    tree with /dev bound into it would reach the host's /dev)."""
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        remove_unmounting(work)


def remove_unmounting(path: Path) -> None:
    """Unmount whatever is mounted below ``path`` (deepest first), then remove it; refuse to
    remove anything while a mount is left."""
    for target in sorted(mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
    if mounts_below(path):
        raise CorralError(f"{path} still has mounts below it; unmount them and remove it")
    shutil.rmtree(path, ignore_errors=True)
