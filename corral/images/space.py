"""Running out of disk space while writing images: a clear error naming the file system, how
much is free and what to do, instead of a bare ``OSError`` or a tool's last words."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from corral.errors import NoResources
from corral.proc import CommandFailed
from corral.units import format_size

NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "ENOSPC")


def no_space(where: Path, what: str, need: int | None = None) -> NoResources:
    try:
        free = format_size(shutil.disk_usage(where).free)
    except OSError:
        free = "unknown"
    state = (
        f"it needs {format_size(need)} and the file system of {where} has {free} free"
        if need is not None
        else f"the file system of {where} is full ({free} free)"
    )
    return NoResources(
        f"{what}: {state}; nothing was kept. Free some space (remove unused images with "
        "`corral image rm`) or move the state directory to a larger disk, then try again",
        field="disk",
        resource="image",
    )


def is_no_space(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, CommandFailed):
        return any(w in err.stderr for w in NO_SPACE_WORDS)
    return False


@contextlib.contextmanager
def space_errors(where: Path, what: str) -> Iterator[None]:
    """Turn "no space left" from any step in the block into one clear ``NoResources``."""
    try:
        yield
    except (OSError, CommandFailed) as err:
        if is_no_space(err) or (isinstance(err, CommandFailed) and _full(where)):
            raise no_space(where, what) from err
        raise


def _full(where: Path) -> bool:
    # tools that hit ENOSPC do not always say so; a nearly full file system is the tell
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return False
    return usage.free < max(1 << 20, usage.total // 200)
