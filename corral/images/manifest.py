"""The image manifest: what an image is made of, each part named by its sha256."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field, model_validator

from corral.images import fields


class Blob(BaseModel):
    sha256: str
    size: int  # bytes on disk
    format: str = "raw"  # raw | qcow2 (disks); raw for kernel and initrd
    virtual_size: int | None = None  # disks only


class Manifest(BaseModel):
    schema_version: int = 1
    name: str
    version: str = "1"
    arch: str = "x86_64"
    kind: str = "busybox"  # busybox | debian | imported
    description: str = ""
    kernel: Blob | None = None
    initrd: Blob | None = None
    root_disk: Blob
    cmdline: str = ""
    default_user: str = "root"
    min_disk: int = 0
    base: str | None = None  # manifest digest of the base image, for deltas
    packages: dict[str, str] = Field(default_factory=dict)
    build_key: str | None = None

    @model_validator(mode="after")
    def _safe_fields(self) -> Manifest:
        # every source of a manifest (recipes, imports, archives, captures) meets these rules
        fields.check_all(self.name, self.version, self.description, self.default_user)
        return self

    def canonical(self) -> bytes:
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def blobs(self) -> list[Blob]:
        return [b for b in (self.kernel, self.initrd, self.root_disk) if b is not None]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs())

    def summary(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "size": self.size,
            "virtual_size": self.root_disk.virtual_size,
        }
