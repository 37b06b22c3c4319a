"""A newc cpio archive (what the kernel unpacks as an initramfs) written from a tree with
nothing taken from the host but names, modes and bytes: inode numbers count up in sorted
order, owners are root, every time is the same. The same tree gives the same bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

TRAILER = "TRAILER!!!"


def _entry(
    fh: BinaryIO, name: str, ino: int, mode: int, data: bytes, mtime: int, nlink: int = 1
) -> None:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(encoded), 0]
    header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    fh.write(header + encoded)
    fh.write(b"\0" * (-(len(header) + len(encoded)) % 4))
    fh.write(data)
    fh.write(b"\0" * (-len(data) % 4))


def write(root: Path, out: Path, mtime: int) -> None:
    """Archive everything below ``root`` (directories, files, symbolic links) to ``out``."""
    paths = sorted(p for p in root.rglob("*"))
    with open(out, "wb") as fh:
        for ino, path in enumerate(paths, start=1):
            st = os.lstat(path)
            name = str(path.relative_to(root))
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                _entry(fh, name, ino, stat.S_IFLNK | 0o777, os.readlink(path).encode(), mtime)
            elif stat.S_ISDIR(st.st_mode):
                _entry(fh, name, ino, stat.S_IFDIR | perm, b"", mtime, nlink=2)
            elif stat.S_ISREG(st.st_mode):
                _entry(fh, name, ino, stat.S_IFREG | perm, path.read_bytes(), mtime)
            else:
                raise ValueError(f"{path}: only directories, files and links go in an initramfs")
        _entry(fh, TRAILER, 0, 0, b"", 0)
