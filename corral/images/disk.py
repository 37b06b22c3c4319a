"""Root disks made from a directory without mounting anything: ext4 by ``mke2fs -d``, an MBR
partition table written here, a qcow2 by ``qemu-img convert``. Same tree, same bytes: every UUID,
hash seed and time stamp is fixed."""

from __future__ import annotations

import os
import re
import struct
import uuid
from pathlib import Path

from corral.proc import need, run

SECTOR = 512
PART_START = 1 << 20  # the first partition starts at 1 MiB, as partitioning tools do
LABEL = "corral-root"


def fixed_uuid(key: str, purpose: str) -> str:
    """A UUID derived from a build key: the same build names its file system the same."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral:{purpose}:{key}"))


def make_ext4(
    tree: Path, out: Path, size: int, *, fs_uuid: str, epoch: int, offset: int = 0
) -> None:
    """An ext4 file system of ``size`` bytes holding ``tree``, at ``offset`` in ``out``."""
    need("mke2fs", "e2fsprogs")
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch))
    extended = f"hash_seed={fs_uuid},root_owner=0:0"
    if offset:
        extended += f",offset={offset}"
    run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            LABEL,
            "-U",
            fs_uuid,
            "-E",
            extended,
            "-d",
            str(tree),
            str(out),
            f"{size // 1024}k",
        ],
        env=env,
        timeout=900,
    )


def _used_inodes(spec: str) -> list[int]:
    """Inode numbers in use, from dumpe2fs's per-group free ranges."""
    out = run(["dumpe2fs", spec], timeout=300)
    count = int(re.search(r"^Inode count:\s+(\d+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    free: set[int] = set()
    for ranges in re.findall(r"^\s+Free inodes: (.*)$", out, re.MULTILINE):
        for part in ranges.split(","):
            lo, _, hi = part.strip().partition("-")
            if lo:
                free.update(range(int(lo), int(hi or lo) + 1))
    return [n for n in range(1, count + 1) if n not in free]


def fix_times(image: Path, epoch: int, offset: int = 0) -> None:
    """Set every inode's change and access time to ``epoch``. ``mke2fs -d`` copies both from
    the source tree: no one can set change times on the host, and reading the tree (mke2fs
    does) moves directories' access times, so both are set in the image."""
    need("debugfs", "e2fsprogs")
    spec = f"{image}?offset={offset}" if offset else str(image)
    used = [n for n in _used_inodes(spec) if n == 2 or n > 10]  # 1, 3-10: reserved
    script = "".join(f"sif <{n}> ctime @{epoch}\nsif <{n}> atime @{epoch}\n" for n in used)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch))
    run(["debugfs", "-w", "-f", "-", spec], input=script.encode(), env=env, timeout=900)


def mbr(disk_size: int, signature: int) -> bytes:
    """A DOS partition table with one Linux partition from 1 MiB to the end of the disk."""
    start = PART_START // SECTOR
    count = disk_size // SECTOR - start
    # CHS fields hold the "use LBA" marker; every current tool reads the LBA fields
    entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, count)
    return b"\0" * 440 + struct.pack("<I", signature) + b"\0\0" + entry + b"\0" * 48 + b"\x55\xaa"


def partitioned(tree: Path, out: Path, size: int, *, key: str, epoch: int) -> None:
    """A raw disk of ``size`` bytes: partition 1 (from 1 MiB) holds ext4 with ``tree``."""
    with open(out, "wb") as fh:
        fh.truncate(size)
    make_ext4(
        tree,
        out,
        size - PART_START,
        fs_uuid=fixed_uuid(key, "rootfs"),
        epoch=epoch,
        offset=PART_START,
    )
    fix_times(out, epoch, offset=PART_START)
    signature = int(fixed_uuid(key, "disk")[:8], 16)
    with open(out, "r+b") as fh:
        fh.write(mbr(size, signature))


def to_qcow2(raw: Path, out: Path, timeout: float = 900) -> None:
    need("qemu-img", "qemu-utils")
    run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
        timeout=timeout,
    )
