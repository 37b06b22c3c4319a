"""Instance root disks: a qcow2 overlay on the image's read-only disk, never a copy, so creating
one takes the same few milliseconds whatever the image's size."""

from __future__ import annotations

import json
import os
from pathlib import Path

from corral.errors import Invalid
from corral.proc import arun, need


async def create(disk: Path, base: Path, base_format: str, size: int) -> None:
    """Create ``disk`` backed by ``base`` (idempotent: an existing disk is kept)."""
    if disk.exists():
        return
    need("qemu-img", "qemu-utils")
    disk.parent.mkdir(parents=True, exist_ok=True)
    tmp = disk.with_name(f".{disk.name}.tmp")
    tmp.unlink(missing_ok=True)
    # -u: do not open the base to read its size, we give the size; it is read-only anyway
    await arun(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base_format,
            "-b",
            str(base),
            "-u",
            str(tmp),
            str(size),
        ]
    )
    os.replace(tmp, disk)


async def info(disk: Path) -> dict[str, object]:
    out = await arun(["qemu-img", "info", "-U", "--output=json", "--", str(disk)])
    data: dict[str, object] = json.loads(out)
    return data


def check_size(size: int, image_virtual_size: int) -> None:
    if size < image_virtual_size:
        raise Invalid(
            f"disk size {size >> 20} MiB is smaller than the image's "
            f"{image_virtual_size >> 20} MiB; "
            "give a larger --disk or leave it out",
            field="disk_size",
        )


def remove(disk: Path) -> None:
    disk.unlink(missing_ok=True)


async def chain(disk: Path) -> list[tuple[Path, str]]:
    """``disk`` and its backing files, top first, each with its format."""
    out = await arun(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(disk)])
    layers = json.loads(out)
    if isinstance(layers, dict):
        layers = [layers]
    return [(Path(x["filename"]), str(x["format"])) for x in layers]
