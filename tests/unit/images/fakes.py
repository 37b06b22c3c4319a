"""Small stand-ins for image parts: qcow2 files that are only a header (enough for the store's
checks, which read headers themselves), and images built from them in an ImageStore."""

from __future__ import annotations

import struct
from pathlib import Path

from corral.images.manifest import Manifest
from corral.images.store import ImageStore

VIRTUAL = 64 << 20


def qcow2_bytes(
    backing: str | None = None,
    payload: bytes = b"",
    *,
    size: int = VIRTUAL,
    incompatible: int = 0,
    crypt: int = 0,
) -> bytes:
    """A qcow2 version 3 header (104 bytes), the backing file name after it, then ``payload``."""
    name = (backing or "").encode()
    offset = 104 if name else 0
    head = (
        b"QFI\xfb"
        + struct.pack(">IQIIQI", 3, offset, len(name), 16, size, crypt)
        + b"\0" * (72 - 36)
        + struct.pack(">QQQII", incompatible, 0, 0, 4, 104)
    )
    assert len(head) == 104
    return head + name + payload


def part(work: Path, name: str, data: bytes) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / name
    path.write_bytes(data)
    return path


def add_base(
    store: ImageStore, work: Path, name: str = "debian", version: str = "12", salt: bytes = b""
) -> Manifest:
    """A whole image: kernel, initrd and a standalone qcow2 disk."""
    kernel = store.add_blob(part(work, f"{name}-k", b"kernel " + salt + b"x" * 3000))
    initrd = store.add_blob(part(work, f"{name}-i", b"initrd " + salt + b"y" * 2000))
    disk = store.add_blob(
        part(work, f"{name}-d", qcow2_bytes(None, b"base disk " + salt * 50)),
        fmt="qcow2",
        virtual_size=VIRTUAL,
    )
    m = Manifest(
        name=name,
        version=version,
        kind="debian",
        kernel=kernel,
        initrd=initrd,
        root_disk=disk,
        cmdline="console=ttyS0 root=/dev/vda1",
        default_user="debian",
        min_disk=VIRTUAL,
    )
    store.put_manifest(m)
    return m


def add_derived(
    store: ImageStore,
    work: Path,
    base: Manifest,
    name: str = "tools",
    version: str = "12.1",
    payload: bytes = b"changed clusters",
) -> Manifest:
    """An image built on ``base``: the same kernel and initrd, a qcow2 overlay on its disk."""
    disk = store.add_blob(
        part(work, f"{name}-{version}-d", qcow2_bytes(base.root_disk.sha256, payload)),
        fmt="qcow2",
        virtual_size=VIRTUAL,
    )
    m = Manifest(
        name=name,
        version=version,
        kind="debian",
        kernel=base.kernel,
        initrd=base.initrd,
        root_disk=disk,
        cmdline=base.cmdline,
        default_user=base.default_user,
        min_disk=base.min_disk,
        base=base.digest,
    )
    store.put_manifest(m)
    return m
