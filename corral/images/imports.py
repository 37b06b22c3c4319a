"""Importing a disk file (qcow2 or raw) as an image: checked to stand alone, copied into a plain
qcow2, described by a new manifest. It boots from its own boot loader, or with the kernel,
initramfs and command line of an image already in the store (``boot_from``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import Invalid
from corral.fsutil import staging_dir
from corral.images import qcow
from corral.images.manifest import Manifest
from corral.images.space import no_space, space_errors
from corral.images.store import ImageStore

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class DiskImport:
    name: str
    version: str = "1"
    format: str | None = None  # qcow2 | raw; sniffed when None
    description: str = ""
    default_user: str = "root"
    min_disk: int = 0
    boot_from: str | None = None  # manifest digest whose kernel, initrd and cmdline to use
    cmdline: str | None = None


def _quiet(_f: float, _m: str) -> None:
    pass


def import_disk(store: ImageStore, src: Path, req: DiskImport, progress: Progress = _quiet) -> str:
    """Add ``src`` to the store as a new image and return its manifest digest."""
    fmt = req.format or qcow.sniff(src)
    if fmt not in ("qcow2", "raw"):
        raise Invalid(
            f"format {fmt!r} is not one Corral imports; give qcow2 or raw", field="format"
        )
    if fmt == "raw" and qcow.sniff(src) == "qcow2":
        raise Invalid(f"{src.name} is a qcow2 file; import it as qcow2", field="format")
    facts = qcow.check_standalone(src, fmt)
    if facts.virtual_size < 1 << 20:
        raise Invalid(
            f"{src.name} is {facts.virtual_size} bytes; a disk image is at least 1 MiB",
            field="file",
        )
    boot = store.get_manifest(req.boot_from) if req.boot_from else None
    store.ensure()
    # the qcow2 copy needs at most the allocated size of the source
    need = min(src.stat().st_blocks * 512, facts.virtual_size) + (16 << 20)
    if shutil.disk_usage(store.tmp).free < need:
        raise no_space(store.root, f"importing {src.name}", need)
    with (
        space_errors(store.root, f"importing {src.name}"),
        staging_dir(store.tmp, "import-disk-") as work,
    ):
        progress(0.1, f"copying {src.name} ({fmt}) into a qcow2")
        disk = work / "root.qcow2"
        qcow.normalize(src, fmt, disk)
        progress(0.8, "adding to the image store")
        blob = store.add_blob(disk, fmt="qcow2", virtual_size=facts.virtual_size, move=True)
        manifest = Manifest(
            name=req.name,
            version=req.version,
            kind="imported",
            description=req.description,
            kernel=boot.kernel if boot else None,
            initrd=boot.initrd if boot else None,
            root_disk=blob,
            cmdline=req.cmdline if req.cmdline is not None else (boot.cmdline if boot else ""),
            default_user=req.default_user,
            min_disk=max(req.min_disk, facts.virtual_size),
        )
        digest = store.put_manifest(manifest)
    progress(1.0, f"imported {req.name}:{req.version}")
    return digest
