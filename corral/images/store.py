"""The content-addressed image store on one host.

Layout under ``<state>/images``::

    blobs/<sha256>            read-only parts (kernel, initrd, root disk)
    manifests/<digest>.json   one per image; the digest is the sha256 of the canonical manifest
    builds/<build-key>        the manifest digest a recipe build produced (the build cache)
    exports/<digest>[-from-<base digest>].tar   export archives, made on request (cached)
    tmp/                      staging, same file system, so every add is a rename

An image built on another one (``base`` in its manifest) has a qcow2 overlay as its root disk,
whose backing file is the base's disk blob, named by its sha256 (blobs sit side by side).
"""

from __future__ import annotations

import builtins
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from corral.errors import CorralError, Invalid, NotFound, WrongState
from corral.fsutil import atomic_write, sha256_file
from corral.images import qcow, tree
from corral.images.manifest import Blob, Manifest


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.builds = root / "builds"
        self.exports = root / "exports"
        self.tmp = root / "tmp"
        self.lock = threading.RLock()  # removal against manifest writes

    def ensure(self) -> None:
        for d in (self.blobs, self.manifests, self.builds, self.exports, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- blobs -----------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise Invalid(f"{sha256!r} is not a sha256 digest", field="sha256")
        return self.blobs / sha256

    def add_blob(
        self,
        src: Path,
        *,
        fmt: str = "raw",
        virtual_size: int | None = None,
        move: bool = False,
        expect_sha256: str | None = None,
        known_sha256: str | None = None,
    ) -> Blob:
        """Add a file by content. ``move`` consumes ``src`` (it must be on this file system).
        ``known_sha256``: the caller hashed the file as it wrote it (no second read)."""
        self.ensure()
        digest = known_sha256 or sha256_file(src)
        if expect_sha256 is not None and digest != expect_sha256:
            raise Invalid(
                f"{src.name}: sha256 is {digest}, expected {expect_sha256}; the file is corrupt "
                "or not the one the manifest names",
                field="sha256",
            )
        dst = self.blob_path(digest)
        size = src.stat().st_size
        if not dst.exists():
            staged = self.tmp / f"{digest}.{os.getpid()}"
            if move:
                os.replace(src, staged)
            else:
                shutil.copyfile(src, staged)
            os.chmod(staged, 0o444)
            os.replace(staged, dst)
        elif move:
            src.unlink()
        return Blob(sha256=digest, size=size, format=fmt, virtual_size=virtual_size)

    def verify_blob(self, blob: Blob) -> None:
        path = self.blob_path(blob.sha256)
        if not path.exists():
            raise NotFound(
                f"image part {blob.sha256[:12]} is missing from {self.blobs}", resource="image"
            )
        actual = sha256_file(path)
        if actual != blob.sha256:
            raise Invalid(
                f"image part {path} is corrupt: sha256 {actual}, expected "
                f"{blob.sha256}; remove the image, then build or import it again",
                resource="image",
            )

    # -- manifests -------------------------------------------------------------------------
    def put_manifest(self, manifest: Manifest) -> str:
        with self.lock:
            return self._put_manifest(manifest)

    def _put_manifest(self, manifest: Manifest) -> str:
        self.ensure()
        if manifest.base is not None and not self.has(manifest.base):
            raise NotFound(
                f"manifest {manifest.name} is built on {manifest.base[:12]}, which "
                "is not in the image store",
                resource="image",
            )
        for blob in manifest.blobs():
            if not self.blob_path(blob.sha256).exists():
                raise NotFound(
                    f"manifest {manifest.name} names a missing part {blob.sha256[:12]}",
                    resource="image",
                )
        digest = manifest.digest
        path = self.manifests / f"{digest}.json"
        if not path.exists():
            atomic_write(path, manifest.canonical(), 0o444)
        return digest

    def get_manifest(self, digest: str) -> Manifest:
        path = self.manifests / f"{digest}.json"
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except FileNotFoundError as err:
            raise NotFound(
                f"image {digest[:12]} is not in the image store at {self.root}", resource="image"
            ) from err

    def has(self, digest: str) -> bool:
        return (self.manifests / f"{digest}.json").exists()

    def list(self) -> list[Manifest]:
        out = []
        if self.manifests.is_dir():
            for p in sorted(self.manifests.glob("*.json")):
                out.append(Manifest.model_validate_json(p.read_bytes()))
        return out

    def verify(self, digest: str, progress: Callable[[float, str], None] | None = None) -> Manifest:
        """Check the manifest and every part of the image and of the images it is built on:
        sha256 of every blob, and each overlay's backing file naming its base's disk."""
        chain = self.chain(digest)
        blobs = [(m, b) for m in chain for b in m.blobs()]
        total = sum(b.size for _, b in blobs) or 1
        done = 0
        for m, blob in blobs:
            if progress:
                progress(done / total, f"checking {m.name}:{m.version} part {blob.sha256[:12]}")
            self.verify_blob(blob)
            done += blob.size
        for m in chain:
            self._check_backing(m)
        return chain[0]

    def _check_backing(self, manifest: Manifest) -> None:
        disk = manifest.root_disk
        if disk.format != "qcow2":
            if manifest.base:
                raise Invalid(
                    f"image {manifest.name}:{manifest.version} names a base but its "
                    "disk is not a qcow2 overlay; the manifest is wrong",
                    resource="image",
                )
            return
        want = self.get_manifest(manifest.base).root_disk.sha256 if manifest.base else None
        qcow.check_overlay(
            self.blob_path(disk.sha256), want, f"image {manifest.name}:{manifest.version}"
        )

    def chain(self, digest: str) -> builtins.list[Manifest]:
        """The image and the images it is built on, nearest first."""
        out = [self.get_manifest(digest)]
        while (base := out[-1].base) is not None:
            if any(m.digest == base for m in out) or len(out) > 64:
                raise Invalid(f"image {digest[:12]} is built on itself", resource="image")
            try:
                out.append(self.get_manifest(base))
            except NotFound as err:
                raise NotFound(
                    f"image {out[-1].name}:{out[-1].version} is built on "
                    f"{base[:12]}, which is missing from the image store; import "
                    "that image again",
                    resource="image",
                ) from err
        return out

    def dependents(self, digest: str) -> builtins.list[Manifest]:
        """Images built directly on ``digest``."""
        return [m for m in self.list() if m.base == digest]

    def remove(self, digest: str) -> None:
        """Remove a manifest, then those of its blobs no other manifest uses. Refused while
        another image is built on it (its disk is that image's backing file)."""
        with self.lock:
            users = self.dependents(digest)
            if users:
                names = ", ".join(sorted(f"{m.name}:{m.version}" for m in users))
                raise WrongState(
                    f"image {digest[:12]} is the base of {names}; remove those first",
                    resource="image",
                )
            path = self.manifests / f"{digest}.json"
            try:
                gone = Manifest.model_validate_json(path.read_bytes())
            except FileNotFoundError:
                return
            path.unlink()
            used = {b.sha256 for m in self.list() for b in m.blobs()}
            for blob in gone.blobs():
                if blob.sha256 not in used:
                    self.blob_path(blob.sha256).unlink(missing_ok=True)
            for b in self.builds.glob("*"):
                if b.read_text().strip() == digest:
                    b.unlink(missing_ok=True)
            for export in self.exports.glob(f"*{digest}*"):
                export.unlink(missing_ok=True)

    def gc(self) -> builtins.list[str]:
        """At start, before any build or import runs: remove staging left by a crash and
        blobs no manifest names (a crash between adding parts and writing the manifest)."""
        removed: builtins.list[str] = []
        self.ensure()
        for entry in self.tmp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                try:
                    tree.remove_unmounting(entry)  # a killed build may have left its mounts
                except CorralError:
                    continue
            else:
                entry.unlink(missing_ok=True)
            removed.append(f"tmp/{entry.name}")
        used = {b.sha256 for m in self.list() for b in m.blobs()}
        for blob in self.blobs.iterdir():
            if blob.name not in used:
                blob.unlink(missing_ok=True)
                removed.append(f"blobs/{blob.name}")
        for export in self.exports.glob(".*"):
            export.unlink(missing_ok=True)
        return removed

    # -- paths for the hypervisor ----------------------------------------------------------
    def kernel_path(self, manifest: Manifest) -> Path | None:
        return self.blob_path(manifest.kernel.sha256) if manifest.kernel else None

    def initrd_path(self, manifest: Manifest) -> Path | None:
        return self.blob_path(manifest.initrd.sha256) if manifest.initrd else None

    def root_disk_path(self, manifest: Manifest) -> Path:
        return self.blob_path(manifest.root_disk.sha256)

    # -- build cache -----------------------------------------------------------------------
    def cached_build(self, build_key: str) -> str | None:
        path = self.builds / build_key
        try:
            digest = path.read_text().strip()
        except FileNotFoundError:
            return None
        return digest if self.has(digest) else None

    def record_build(self, build_key: str, digest: str) -> None:
        atomic_write(self.builds / build_key, digest + "\n")
