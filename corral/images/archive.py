"""Export archives: an image, and the images it is built on unless shipped as a delta, in a
plain tar file (``tar tf`` lists it)::

    corral-image.json          the index: format, the image, the base a delta needs
    manifests/<digest>.json    canonical manifests (the sha256 of each is its name)
    blobs/<sha256>.zst         the image parts, zstd-compressed, named by the uncompressed sha256

A delta (``delta_from``) leaves out that base and everything it has; the image's root disk is the
qcow2 overlay on the base's disk. Importing checks everything before the store changes: the base
is there and intact (sha256 of its parts), every part decompresses to its sha256, every overlay's
backing file is the disk its manifest's base names. Then the parts move in and the manifests are
written, bases first: a crash in between leaves only unnamed blobs, which ``ImageStore.gc`` removes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import zstandard
from pydantic import BaseModel, ValidationError

from corral.errors import Invalid, NotFound
from corral.fsutil import sha256_file, staging_dir
from corral.images import qcow
from corral.images.manifest import Blob, Manifest
from corral.images.space import no_space, space_errors
from corral.images.store import ImageStore

FORMAT = "corral-image-archive/1"
INDEX = "corral-image.json"
CHUNK = 1 << 20
LEVEL = 3  # zstd level for whole parts: fast, and kernels and initramfs are compressed already
DELTA_LEVEL = 9  # for overlays (small): as small as xdelta3 -9's delta (bench/images.py)
_MEMBER = re.compile(r"^(corral-image\.json|manifests/[0-9a-f]{64}\.json|blobs/[0-9a-f]{64}\.zst)$")
Progress = Callable[[float, str], None]


def _quiet(_f: float, _m: str) -> None:
    pass


class Index(BaseModel):
    format: str
    image: str
    name: str
    version: str
    delta_from: str | None = None
    delta_from_name: str | None = None  # name:version of the base, for messages
    manifests: list[str]  # digests, bases first
    blobs: dict[str, int]  # sha256 -> uncompressed size


# -- export --------------------------------------------------------------------------------
def plan(store: ImageStore, digest: str, delta_from: str | None) -> tuple[Index, list[Blob]]:
    """What an export of ``digest`` holds (refused when ``delta_from`` is not its base)."""
    chain = store.chain(digest)
    have: set[str] = set()
    include = chain
    base_name = None
    if delta_from is not None:
        digests = [m.digest for m in chain]
        if delta_from not in digests[1:]:
            image = f"{chain[0].name}:{chain[0].version}"
            why = (
                f"its base is {chain[1].name}:{chain[1].version} ({chain[1].digest[:12]})"
                if len(chain) > 1
                else "it is not built on another image"
            )
            raise Invalid(
                f"image {image} is not built on {delta_from[:12]} ({why}); export "
                "it whole, or with --delta-from its base",
                field="delta_from",
            )
        include = chain[: digests.index(delta_from)]
        base = chain[digests.index(delta_from)]
        base_name = f"{base.name}:{base.version}"
        have = {b.sha256 for m in store.chain(delta_from) for b in m.blobs()}
    blobs: dict[str, Blob] = {}
    for m in reversed(include):
        for b in m.blobs():
            if b.sha256 not in have:
                blobs.setdefault(b.sha256, b)
    index = Index(
        format=FORMAT,
        image=digest,
        name=chain[0].name,
        version=chain[0].version,
        delta_from=delta_from,
        delta_from_name=base_name,
        manifests=[m.digest for m in reversed(include)],
        blobs={s: b.size for s, b in blobs.items()},
    )
    return index, list(blobs.values())


def export(
    store: ImageStore,
    digest: str,
    out: Path,
    delta_from: str | None = None,
    progress: Progress = _quiet,
) -> Index:
    """Write the archive to ``out`` (through a temporary file beside it, then renamed)."""
    index, blobs = plan(store, digest, delta_from)
    overlays = {
        store.get_manifest(d).root_disk.sha256
        for d in index.manifests
        if store.get_manifest(d).base
    }
    total = sum(b.size for b in blobs) or 1
    done = 0
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with space_errors(out.parent, f"exporting {index.name}:{index.version}"):
        try:
            with open(tmp, "wb") as fh:
                tar = _TarWriter(fh)
                tar.add_bytes(INDEX, index.model_dump_json(indent=2).encode())
                for d in index.manifests:
                    tar.add_bytes(f"manifests/{d}.json", store.get_manifest(d).canonical())
                for blob in blobs:
                    progress(
                        done / total, f"compressing part {blob.sha256[:12]} ({blob.size >> 20} MiB)"
                    )
                    level = DELTA_LEVEL if blob.sha256 in overlays else LEVEL
                    tar.add_stream(
                        f"blobs/{blob.sha256}.zst", functools.partial(_compress, store, blob, level)
                    )
                    done += blob.size
                tar.close()
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    progress(1.0, f"exported {index.name}:{index.version}")
    return index


def _compress(store: ImageStore, blob: Blob, level: int, out: IO[bytes]) -> None:
    """zstd-compress a blob into ``out``, checking its sha256 on the way (a corrupt part is
    never shipped)."""
    h = hashlib.sha256()
    cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_content_size=True)
    path = store.blob_path(blob.sha256)
    intact = path.stat().st_size == blob.size  # (the frame header promises blob.size bytes)
    if intact:
        with (
            open(path, "rb") as src,
            cctx.stream_writer(out, size=blob.size, closefd=False) as writer,
        ):
            while chunk := src.read(CHUNK):
                h.update(chunk)
                writer.write(chunk)
        intact = h.hexdigest() == blob.sha256
    if not intact:
        raise Invalid(
            f"image part {blob.sha256[:12]} is corrupt in this store; `corral image "
            "verify` it, then rebuild or import it again",
            resource="image",
        )


class _TarWriter:
    """A ustar writer for members whose size is known only once written (compressed parts):
    the header is written after the data, in the block reserved for it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh

    @staticmethod
    def _header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o444, 0
        info.uname = info.gname = "root"
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    def _pad(self, size: int) -> None:
        self.fh.write(b"\0" * (-size % 512))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.fh.write(self._header(name, len(data)))
        self.fh.write(data)
        self._pad(len(data))

    def add_stream(self, name: str, fill: Callable[[IO[bytes]], None]) -> None:
        start = self.fh.tell()
        self.fh.write(b"\0" * 512)
        self.fh.flush()
        fill(self.fh)
        self.fh.flush()
        end = self.fh.tell()
        size = end - start - 512
        self.fh.seek(start)
        self.fh.write(self._header(name, size))
        self.fh.seek(end)
        self._pad(size)

    def close(self) -> None:
        self.fh.write(b"\0" * 1024)


# -- import --------------------------------------------------------------------------------
def is_archive(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(257)
        return fh.read(5) == b"ustar"


def import_archive(store: ImageStore, path: Path, progress: Progress = _quiet) -> Index:
    """Add the images of an archive to ``store``; all checks pass before anything is added."""
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.TarError as err:
        raise Invalid(f"{path.name} is not a Corral image archive: {err}", field="file") from err
    with tar:
        members = _members(tar, path)
        index = _read_index(tar, members)
        manifests = _read_manifests(tar, members, index)
        _check_base(store, index, manifests)
        needed = _needed_blobs(store, index, manifests, members)
        _check_space(store, sum(index.blobs[s] for s in needed))
        with (
            space_errors(store.root, f"importing {index.name}:{index.version}"),
            staging_dir(store.tmp, "import-") as work,
        ):
            total = sum(index.blobs[s] for s in needed) or 1
            done = 0
            for sha in needed:
                progress(0.05 + 0.85 * done / total, f"unpacking part {sha[:12]}")
                _unpack(tar, members[f"blobs/{sha}.zst"], work / sha, sha, index.blobs[sha])
                done += index.blobs[sha]
            _check_disks(store, manifests, work)
            progress(0.95, "adding to the image store")
            with store.lock:
                for sha in needed:
                    blob = next(b for m in manifests.values() for b in m.blobs() if b.sha256 == sha)
                    store.add_blob(
                        work / sha,
                        fmt=blob.format,
                        virtual_size=blob.virtual_size,
                        move=True,
                        known_sha256=sha,
                    )
                for d in index.manifests:
                    store.put_manifest(manifests[d])
    progress(1.0, f"imported {index.name}:{index.version}")
    return index


def _members(tar: tarfile.TarFile, path: Path) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        if not m.isfile() or not _MEMBER.match(m.name):
            raise Invalid(
                f"{path.name}: unexpected member {m.name!r}; not a Corral image "
                "archive (make one with `corral image export`)",
                field="file",
            )
        members[m.name] = m
    if INDEX not in members:
        raise Invalid(f"{path.name} has no {INDEX}; not a Corral image archive", field="file")
    return members


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int = 16 << 20) -> bytes:
    if member.size > limit:
        raise Invalid(
            f"archive member {member.name} is too large ({member.size} bytes)", field="file"
        )
    fh = tar.extractfile(member)
    assert fh is not None
    return fh.read()


def _read_index(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> Index:
    try:
        index = Index.model_validate_json(_read(tar, members[INDEX]))
    except ValidationError as err:
        raise Invalid(
            f"the archive's {INDEX} is not valid: {err.errors()[0]['msg']}", field="file"
        ) from err
    if index.format != FORMAT:
        raise Invalid(
            f"archive format {index.format!r} is not {FORMAT!r}; export it with a matching Corral",
            field="file",
        )
    if index.image not in index.manifests:
        raise Invalid("the archive's index does not list its own image", field="file")
    return index


def _read_manifests(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], index: Index
) -> dict[str, Manifest]:
    manifests: dict[str, Manifest] = {}
    for d in index.manifests:
        member = members.get(f"manifests/{d}.json")
        if member is None:
            raise Invalid(f"the archive lacks the manifest {d[:12]} its index names", field="file")
        raw = _read(tar, member)
        try:
            m = Manifest.model_validate_json(raw)
        except ValidationError as err:
            raise Invalid(f"manifest {d[:12]} in the archive is not valid", field="file") from err
        if m.digest != d or hashlib.sha256(raw).hexdigest() != d:
            raise Invalid(
                f"manifest {d[:12]} in the archive does not match its sha256: the "
                "archive is corrupt",
                field="file",
            )
        manifests[d] = m
    return manifests


def _check_base(store: ImageStore, index: Index, manifests: dict[str, Manifest]) -> None:
    """A delta needs its exact base, intact; every other base must come with the archive."""
    if index.delta_from is not None:
        want = index.delta_from_name or index.delta_from[:12]
        if not store.has(index.delta_from):
            same = [m for m in store.list() if f"{m.name}:{m.version}" == want]
            other = (
                f"; this store's {want} is {same[0].digest[:12]}, a different build" if same else ""
            )
            raise NotFound(
                f"{index.name}:{index.version} is a delta against {want} "
                f"({index.delta_from[:12]}), which this store does not have{other}. Import "
                f"that base first (a whole export of it); nothing was written",
                field="delta_from",
                resource="image",
            )
        store.verify(index.delta_from)
    for m in manifests.values():
        if m.base and m.base not in manifests and not store.has(m.base):
            raise NotFound(
                f"{m.name}:{m.version} in the archive is built on {m.base[:12]}, "
                "which neither the archive nor this store has; nothing was written",
                field="file",
                resource="image",
            )


def _needed_blobs(
    store: ImageStore,
    index: Index,
    manifests: dict[str, Manifest],
    members: dict[str, tarfile.TarInfo],
) -> list[str]:
    needed: list[str] = []
    for m in (manifests[d] for d in index.manifests):
        for b in m.blobs():
            if b.sha256 in needed or store.blob_path(b.sha256).exists():
                continue
            if f"blobs/{b.sha256}.zst" not in members or index.blobs.get(b.sha256) != b.size:
                raise Invalid(
                    f"the archive lacks part {b.sha256[:12]} of {m.name}:{m.version}", field="file"
                )
            needed.append(b.sha256)
    return needed


def _check_space(store: ImageStore, need: int) -> None:
    store.ensure()
    if shutil.disk_usage(store.tmp).free < need + (16 << 20):
        raise no_space(store.root, "importing", need + (16 << 20))


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, out: Path, sha: str, size: int) -> None:
    src = tar.extractfile(member)
    assert src is not None
    h = hashlib.sha256()
    written = 0
    dctx = zstandard.ZstdDecompressor()
    try:
        with open(out, "wb") as fh, dctx.stream_reader(src) as reader:
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > size:
                    break  # more than the manifest says: corrupt (and never a bomb)
                h.update(chunk)
                fh.write(chunk)
    except zstandard.ZstdError as err:
        raise Invalid(f"part {sha[:12]} of the archive is corrupt: {err}", field="file") from err
    if written != size or h.hexdigest() != sha:
        raise Invalid(
            f"part {sha[:12]} of the archive is corrupt: it unpacks to "
            f"{h.hexdigest()[:12]} ({written} bytes), expected {sha[:12]} ({size} "
            "bytes); nothing was written",
            field="file",
        )


def _check_disks(store: ImageStore, manifests: dict[str, Manifest], work: Path) -> None:
    """A root disk in qcow2 may only point at the disk of its manifest's base."""
    for m in manifests.values():
        disk = m.root_disk
        if disk.format != "qcow2":
            if m.base:
                raise Invalid(
                    f"{m.name}:{m.version} in the archive names a base but its disk "
                    "is not a qcow2 overlay; refusing it",
                    field="file",
                )
            continue
        path = work / disk.sha256
        if not path.exists():
            path = store.blob_path(disk.sha256)
        base = manifests.get(m.base) if m.base else None
        if m.base and base is None:
            base = store.get_manifest(m.base)
        qcow.check_overlay(
            path, base.root_disk.sha256 if base else None, f"{m.name}:{m.version} in the archive"
        )


def archive_sha256(path: Path) -> str:
    return sha256_file(path)
