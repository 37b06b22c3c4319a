"""The content-addressed image store on one host.

Layout under ``<state>/images``::

    blobs/<sha256>            read-only parts (kernel, initrd, root disk)
    manifests/<digest>.json   one per image; the digest is the sha256 of the canonical manifest
    builds/<build-key>        the manifest digest a recipe build produced (the build cache)
    tmp/                      staging, same file system, so every add is a rename
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from corral.errors import Invalid, NotFound
from corral.fsutil import atomic_write, sha256_file
from corral.images.manifest import Blob, Manifest


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.builds = root / "builds"
        self.tmp = root / "tmp"

    def ensure(self) -> None:
        for d in (self.blobs, self.manifests, self.builds, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- blobs -----------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise Invalid(f"{sha256!r} is not a sha256 digest", field="sha256")
        return self.blobs / sha256

    def add_blob(self, src: Path, *, fmt: str = "raw", virtual_size: int | None = None,
                 move: bool = False, expect_sha256: str | None = None) -> Blob:
        """Add a file by content. ``move`` consumes ``src`` (it must be on this file system)."""
        self.ensure()
        digest = sha256_file(src)
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
            raise NotFound(f"image part {blob.sha256[:12]} is missing from {self.blobs}",
                           resource="image")
        actual = sha256_file(path)
        if actual != blob.sha256:
            raise Invalid(f"image part {path} is corrupt: sha256 {actual}, expected {blob.sha256}",
                          resource="image")

    # -- manifests -------------------------------------------------------------------------
    def put_manifest(self, manifest: Manifest) -> str:
        self.ensure()
        for blob in manifest.blobs():
            if not self.blob_path(blob.sha256).exists():
                raise NotFound(f"manifest {manifest.name} names a missing part {blob.sha256[:12]}",
                               resource="image")
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
            raise NotFound(f"image {digest[:12]} is not in the image store at {self.root}",
                           resource="image") from err

    def has(self, digest: str) -> bool:
        return (self.manifests / f"{digest}.json").exists()

    def list(self) -> list[Manifest]:
        out = []
        if self.manifests.is_dir():
            for p in sorted(self.manifests.glob("*.json")):
                out.append(Manifest.model_validate_json(p.read_bytes()))
        return out

    def verify(self, digest: str) -> Manifest:
        manifest = self.get_manifest(digest)
        for blob in manifest.blobs():
            self.verify_blob(blob)
        return manifest

    def remove(self, digest: str) -> None:
        """Remove a manifest, then every blob no other manifest uses."""
        path = self.manifests / f"{digest}.json"
        path.unlink(missing_ok=True)
        used = {b.sha256 for m in self.list() for b in m.blobs()}
        for blob in self.blobs.glob("*"):
            if blob.name not in used:
                blob.unlink(missing_ok=True)
        for b in self.builds.glob("*"):
            if b.read_text().strip() == digest:
                b.unlink(missing_ok=True)

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
