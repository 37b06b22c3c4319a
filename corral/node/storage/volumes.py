"""Volumes and snapshots on a node: qcow2 files, written under a temporary name and renamed, so
a crash never leaves half a volume under its real name. Snapshots of detached disks and captured
images are flattened copies (``qemu-img convert -U``); a disk in a running VM is copied by QEMU
itself (``driver/hotplug.backup``) into a file made here (``backup_target``). A new volume may
come formatted (ext4, with a label), so a guest only has to mount it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from corral.proc import arun, need

TIMEOUT = 1800.0  # copying a large disk on a slow host


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


FILESYSTEMS = ("ext4",)


async def create(
    path: Path, size: int, source: Path | None = None, fs: str | None = None, label: str = ""
) -> None:
    """A volume of ``size`` bytes: empty, formatted with ``fs`` (labelled ``label``), or with
    ``source``'s content (idempotent)."""
    if path.exists():
        return
    need("qemu-img", "qemu-utils")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.unlink(missing_ok=True)
    if source is None and fs is not None:
        await _formatted(tmp, size, fs, label)
    elif source is None:
        await arun(["qemu-img", "create", "-q", "-f", "qcow2", "--", str(tmp), str(size)])
    else:
        await arun(
            ["qemu-img", "convert", "-q", "-U", "-O", "qcow2", "--", str(source), str(tmp)],
            timeout=TIMEOUT,
        )
        await arun(["qemu-img", "resize", "-q", "-f", "qcow2", "--", str(tmp), str(size)])
    os.replace(tmp, path)


async def flatten(source: Path, dest: Path) -> None:
    """A standalone qcow2 copy of ``source`` (which may have a backing file and be in use)."""
    if dest.exists():
        return
    need("qemu-img", "qemu-utils")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dest)
    tmp.unlink(missing_ok=True)
    await arun(
        ["qemu-img", "convert", "-q", "-U", "-O", "qcow2", "-c", "--", str(source), str(tmp)],
        timeout=TIMEOUT,
    )
    os.replace(tmp, dest)


async def _formatted(tmp: Path, size: int, fs: str, label: str) -> None:
    """mke2fs on a sparse raw file, then into qcow2 (only the written metadata takes space):
    the host needs no NBD or loop device for it."""
    need("mke2fs", "e2fsprogs")
    raw = tmp.with_name(tmp.name + ".raw")
    try:
        with open(raw, "wb") as fh:
            fh.truncate(size)
        # lazy init: the guest's kernel zeroes inode tables in the background, the file stays small
        await arun(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                fs,
                "-L",
                label[:16],
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                str(raw),
            ],
            timeout=TIMEOUT,
        )
        await arun(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "--", str(raw), str(tmp)],
            timeout=TIMEOUT,
        )
    finally:
        raw.unlink(missing_ok=True)


async def backup_target(path: Path, size: int) -> Path:
    """An empty qcow2 file of ``size`` bytes under ``path``'s temporary name, for QEMU to copy
    a running disk into; ``commit`` then gives it the real name."""
    need("qemu-img", "qemu-utils")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.unlink(missing_ok=True)
    await arun(["qemu-img", "create", "-q", "-f", "qcow2", "--", str(tmp), str(size)])
    return tmp


def commit(path: Path) -> None:
    """Give a finished temporary file its real name (after syncing it to disk)."""
    tmp = _tmp(path)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def virtual_size(path: Path) -> int:
    out = await arun(["qemu-img", "info", "-U", "--output=json", "--", str(path)])
    return int(json.loads(out)["virtual-size"])


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _tmp(path).unlink(missing_ok=True)
