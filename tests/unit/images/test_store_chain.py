"""Images built on other images: chains, removal guards, verification of overlays, and the
clean-up of what a crash left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.errors import Code, Invalid, NotFound, WrongState
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from tests.unit.images.fakes import VIRTUAL, add_base, add_derived, part, qcow2_bytes


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(tmp_path / "images")
    s.ensure()
    return s


def test_chain_lists_the_image_then_its_bases(store: ImageStore, tmp_path: Path) -> None:
    base = add_base(store, tmp_path / "w")
    v1 = add_derived(store, tmp_path / "w", base, version="12.1")
    v2 = add_derived(store, tmp_path / "w", v1, version="12.2", payload=b"more")
    assert [m.digest for m in store.chain(v2.digest)] == [v2.digest, v1.digest, base.digest]
    assert [m.digest for m in store.dependents(base.digest)] == [v1.digest]


def test_a_manifest_cannot_name_a_base_the_store_lacks(store: ImageStore, tmp_path: Path) -> None:
    disk = store.add_blob(part(tmp_path, "d", qcow2_bytes("f" * 64)), fmt="qcow2")
    m = Manifest(name="orphan", root_disk=disk, base="f" * 64)
    with pytest.raises(NotFound) as info:
        store.put_manifest(m)
    assert "built on" in info.value.message
    assert not store.has(m.digest)


def test_a_base_cannot_be_removed_while_an_image_is_built_on_it(
    store: ImageStore, tmp_path: Path
) -> None:
    base = add_base(store, tmp_path / "w")
    derived = add_derived(store, tmp_path / "w", base)
    with pytest.raises(WrongState) as info:
        store.remove(base.digest)
    assert "tools:12.1" in info.value.message
    assert store.has(base.digest)
    store.verify(derived.digest)  # intact


def test_removing_the_derived_image_keeps_the_parts_its_base_uses(
    store: ImageStore, tmp_path: Path
) -> None:
    base = add_base(store, tmp_path / "w")
    derived = add_derived(store, tmp_path / "w", base)
    store.remove(derived.digest)
    assert not store.blob_path(derived.root_disk.sha256).exists()
    store.verify(base.digest)  # kernel and initrd were shared: still there
    store.remove(base.digest)
    assert list(store.blobs.iterdir()) == []


def test_verify_checks_every_part_of_the_chain(store: ImageStore, tmp_path: Path) -> None:
    base = add_base(store, tmp_path / "w")
    derived = add_derived(store, tmp_path / "w", base)
    store.verify(derived.digest)
    path = store.blob_path(base.root_disk.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"bit rot")
    with pytest.raises(Invalid) as info:
        store.verify(derived.digest)
    assert info.value.code == Code.INVALID and "corrupt" in info.value.message


def test_verify_refuses_an_overlay_on_another_disk(store: ImageStore, tmp_path: Path) -> None:
    base = add_base(store, tmp_path / "w")
    wrong = store.add_blob(
        part(tmp_path, "wrong", qcow2_bytes("/etc/shadow", b"x")), fmt="qcow2", virtual_size=VIRTUAL
    )
    m = Manifest(name="evil", root_disk=wrong, base=base.digest)
    store.put_manifest(m)
    with pytest.raises(Invalid) as info:
        store.verify(m.digest)
    assert "/etc/shadow" in info.value.message


def test_verify_refuses_a_standalone_disk_with_a_backing_file(
    store: ImageStore, tmp_path: Path
) -> None:
    disk = store.add_blob(part(tmp_path, "d", qcow2_bytes("/dev/sda")), fmt="qcow2")
    m = Manifest(name="sneaky", root_disk=disk)
    store.put_manifest(m)
    with pytest.raises(Invalid):
        store.verify(m.digest)


def test_verify_refuses_an_external_data_file(store: ImageStore, tmp_path: Path) -> None:
    disk = store.add_blob(part(tmp_path, "d", qcow2_bytes(None, incompatible=0b100)), fmt="qcow2")
    m = Manifest(name="external", root_disk=disk)
    store.put_manifest(m)
    with pytest.raises(Invalid) as info:
        store.verify(m.digest)
    assert "external data" in info.value.message


def test_verify_reports_progress(store: ImageStore, tmp_path: Path) -> None:
    base = add_base(store, tmp_path / "w")
    seen: list[float] = []
    store.verify(base.digest, lambda f, _m: seen.append(f))
    assert seen and seen == sorted(seen) and seen[0] == 0.0


def test_gc_removes_staging_and_unnamed_blobs_but_keeps_images(
    store: ImageStore, tmp_path: Path
) -> None:
    base = add_base(store, tmp_path / "w")
    (store.tmp / "build-debian-x").mkdir()
    (store.tmp / "build-debian-x" / "root.raw").write_bytes(b"half a disk")
    (store.tmp / "upload-123").write_bytes(b"half an upload")
    orphan = store.add_blob(part(tmp_path, "orphan", b"a part whose manifest never came"))
    (store.exports / ".x.tar.1.tmp").write_bytes(b"half an export")
    removed = store.gc()
    assert f"blobs/{orphan.sha256}" in removed
    assert list(store.tmp.iterdir()) == [] and list(store.exports.iterdir()) == []
    store.verify(base.digest)


def test_chain_of_an_image_whose_base_vanished_says_what_to_do(
    store: ImageStore, tmp_path: Path
) -> None:
    base = add_base(store, tmp_path / "w")
    derived = add_derived(store, tmp_path / "w", base)
    (store.manifests / f"{base.digest}.json").unlink()  # someone deleted it by hand
    with pytest.raises(NotFound) as info:
        store.chain(derived.digest)
    assert "missing" in info.value.message and "import" in info.value.message


def test_known_sha256_skips_rehashing(store: ImageStore, tmp_path: Path) -> None:
    import hashlib

    data = b"hashed while it was written"
    sha = hashlib.sha256(data).hexdigest()
    blob = store.add_blob(part(tmp_path, "p", data), known_sha256=sha, move=True)
    assert blob.sha256 == sha and store.blob_path(sha).read_bytes() == data
