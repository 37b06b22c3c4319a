"""qemu-img for the image store: facts about disk files, and qcow2 overlays as deltas.

A delta of image B against image A is a qcow2 overlay holding only the clusters where B differs
from A, with A's blob as its backing file (named by its sha256, relative: blobs sit side by side,
so the store can move). It boots as it is on top of A, and ships compressed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import Invalid
from corral.proc import CommandFailed, need, run

QCOW2_MAGIC = b"QFI\xfb"
# 4 KiB clusters (qcow2's default is 64 KiB): an overlay then holds only the changed file system
# blocks, not their 64 KiB neighbourhoods; with zstd -9 the delta is no bigger than xdelta3 -9's
# (bench/results/images.md)
DELTA_CLUSTER = 4096


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int
    backing: str | None
    data_file: str | None


def sniff(path: Path) -> str:
    """``qcow2`` or ``raw`` by the file's first bytes (never by asking qemu to guess)."""
    with open(path, "rb") as fh:
        return "qcow2" if fh.read(4) == QCOW2_MAGIC else "raw"


def info(path: Path, fmt: str) -> DiskInfo:
    """Facts from ``qemu-img info`` (which opens no backing file), for a known format."""
    need("qemu-img", "qemu-utils")
    try:
        out = run(
            ["qemu-img", "info", "-U", "-f", fmt, "--output=json", "--", str(path)], timeout=60
        )
    except CommandFailed as err:
        raise Invalid(
            f"{path.name} is not a readable {fmt} disk: {err.message}", field="format"
        ) from err
    data: dict[str, Any] = json.loads(out)
    specific = (data.get("format-specific") or {}).get("data") or {}
    return DiskInfo(
        format=data["format"],
        virtual_size=int(data["virtual-size"]),
        backing=data.get("backing-filename"),
        data_file=specific.get("data-file"),
    )


def check_standalone(path: Path, fmt: str) -> DiskInfo:
    """A disk file to import must stand alone: no backing file, no external data file (either
    would let an image read arbitrary host files)."""
    facts = info(path, fmt)
    if facts.backing:
        raise Invalid(
            f"{path.name} is a qcow2 overlay on {facts.backing!r}; import a "
            "self-contained disk (qemu-img convert -O qcow2 it first) or a Corral "
            "export archive",
            field="file",
        )
    if facts.data_file:
        raise Invalid(
            f"{path.name} keeps its data in an external file {facts.data_file!r}; "
            "convert it to a self-contained qcow2 first",
            field="file",
        )
    return facts


def normalize(src: Path, fmt: str, out: Path, timeout: float = 3600) -> None:
    """A plain qcow2 copy of ``src`` (sparse, no compression, no odd features)."""
    run(
        ["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", str(src), str(out)], timeout=timeout
    )


def make_delta(
    new: Path,
    new_format: str,
    base: Path,
    out: Path,
    *,
    backing_name: str,
    cluster_size: int = DELTA_CLUSTER,
    timeout: float = 3600,
) -> None:
    """``out``: a qcow2 overlay on ``base`` whose content equals ``new`` (only the clusters
    that differ are stored), then pointed at ``backing_name`` for the store."""
    need("qemu-img", "qemu-utils")
    size = info(new, new_format).virtual_size
    if info(base, "qcow2").virtual_size != size:
        raise Invalid(
            f"the new disk is {size} bytes and its base "
            f"{info(base, 'qcow2').virtual_size}; a delta needs equal sizes",
            field="base",
        )
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"cluster_size={cluster_size}",
            "-b",
            str(new.resolve()),
            "-F",
            new_format,
            str(out),
            str(size),
        ],
        timeout=60,
    )
    # safe mode: copies into ``out`` every cluster where ``new`` and ``base`` differ
    run(
        [
            "qemu-img",
            "rebase",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(base.resolve()),
            "-F",
            "qcow2",
            str(out),
        ],
        timeout=timeout,
    )
    set_backing(out, backing_name)


def set_backing(overlay: Path, name: str) -> None:
    """Rename the backing file in the header only (the content is not looked at)."""
    run(
        ["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", name, "-F", "qcow2", str(overlay)],
        timeout=60,
    )


@dataclass(frozen=True)
class Header:
    version: int
    backing: str | None
    virtual_size: int
    encrypted: bool
    external_data: bool


def header(path: Path) -> Header | None:
    """The facts of a qcow2 header, read directly (no qemu-img, nothing else opened); None
    when the file is not qcow2."""
    with open(path, "rb") as fh:
        head = fh.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            return None
        version = int.from_bytes(head[4:8], "big")
        offset = int.from_bytes(head[8:16], "big")
        size = int.from_bytes(head[16:20], "big")
        backing = None
        if offset and 0 < size <= 1023:
            fh.seek(offset)
            backing = fh.read(size).decode(errors="replace")
        incompatible = int.from_bytes(head[72:80], "big") if version >= 3 and len(head) >= 80 else 0
        return Header(
            version=version,
            backing=backing,
            virtual_size=int.from_bytes(head[24:32], "big"),
            encrypted=int.from_bytes(head[32:36], "big") != 0,
            external_data=bool(incompatible & 0b100),
        )


def backing_name(path: Path) -> str | None:
    h = header(path)
    return h.backing if h else None


def check_overlay(path: Path, backing: str | None, what: str) -> None:
    """A stored qcow2 disk may only point at ``backing`` (the blob its manifest's base names)
    and must keep its data in itself, unencrypted."""
    h = header(path)
    if h is None:
        raise Invalid(f"{what}: the disk is not qcow2 as its manifest says", resource="image")
    if h.backing != backing:
        raise Invalid(
            f"{what}: the disk is an overlay on {h.backing!r}, its manifest says "
            f"{backing!r}; refusing it (build or import the image again)",
            resource="image",
        )
    if h.external_data or h.encrypted:
        raise Invalid(
            f"{what}: the disk uses an external data file or encryption; refusing it",
            resource="image",
        )
