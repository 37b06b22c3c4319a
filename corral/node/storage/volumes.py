"""Volumes and snapshots on a node: qcow2 files, written under a temporary name and renamed, so
a crash never leaves half a volume under its real name. Snapshots and captured images are
flattened copies (``qemu-img convert -U`` reads a disk a running QEMU holds open)."""

from __future__ import annotations

import os
from pathlib import Path

from corral.proc import arun, need

TIMEOUT = 1800.0  # copying a large disk on a slow host


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


async def create(path: Path, size: int, source: Path | None = None) -> None:
    """A volume of ``size`` bytes, empty or with ``source``'s content (idempotent)."""
    if path.exists():  # noqa: ASYNC240 (a stat: cheaper than a thread hop)
        return
    need("qemu-img", "qemu-utils")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.unlink(missing_ok=True)
    if source is None:
        await arun(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), str(size)])
    else:
        await arun(["qemu-img", "convert", "-q", "-U", "-O", "qcow2", str(source), str(tmp)],
                   timeout=TIMEOUT)
        await arun(["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp), str(size)])
    os.replace(tmp, path)


async def flatten(source: Path, dest: Path) -> None:
    """A standalone qcow2 copy of ``source`` (which may have a backing file and be in use)."""
    if dest.exists():  # noqa: ASYNC240
        return
    need("qemu-img", "qemu-utils")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dest)
    tmp.unlink(missing_ok=True)
    await arun(["qemu-img", "convert", "-q", "-U", "-O", "qcow2", "-c", str(source), str(tmp)],
               timeout=TIMEOUT)
    os.replace(tmp, dest)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _tmp(path).unlink(missing_ok=True)
