"""The content-addressed image store and the image manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from corral.errors import Code, Invalid, NotFound
from corral.images.manifest import Blob, Manifest
from corral.images.store import ImageStore
from tests.unit.helpers import add_image


@pytest.fixture
def images(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(b"bit rot")


def test_add_blob_names_the_part_by_its_sha256(images: ImageStore, tmp_path: Path) -> None:
    data = b"kernel bytes" * 100
    blob = images.add_blob(_file(tmp_path, "vmlinuz", data), virtual_size=None)
    digest = hashlib.sha256(data).hexdigest()
    assert blob == Blob(sha256=digest, size=len(data), format="raw", virtual_size=None)
    stored = images.blobs / digest
    assert stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o444
    assert list(images.tmp.iterdir()) == []


def test_add_blob_twice_is_idempotent(images: ImageStore, tmp_path: Path) -> None:
    first = images.add_blob(_file(tmp_path, "a", b"same"), fmt="qcow2", virtual_size=1 << 30)
    second = images.add_blob(_file(tmp_path, "b", b"same"), fmt="qcow2", virtual_size=1 << 30)
    assert first == second
    assert [p.name for p in images.blobs.iterdir()] == [first.sha256]


def test_add_blob_with_move_consumes_the_source(images: ImageStore, tmp_path: Path) -> None:
    src = _file(tmp_path, "disk", b"disk")
    blob = images.add_blob(src, move=True)
    assert not src.exists()
    assert images.blob_path(blob.sha256).read_bytes() == b"disk"
    again = _file(tmp_path, "disk2", b"disk")
    images.add_blob(again, move=True)  # already stored: the source still goes away
    assert not again.exists()


def test_add_blob_with_expected_digest_accepts_the_right_file(
    images: ImageStore, tmp_path: Path
) -> None:
    digest = hashlib.sha256(b"right").hexdigest()
    blob = images.add_blob(_file(tmp_path, "part", b"right"), expect_sha256=digest)
    assert blob.sha256 == digest


def test_add_blob_with_wrong_expected_digest_is_invalid_and_stores_nothing(
    images: ImageStore, tmp_path: Path
) -> None:
    with pytest.raises(Invalid) as info:
        images.add_blob(_file(tmp_path, "part", b"wrong"), expect_sha256="0" * 64)
    assert (info.value.code, info.value.field) == (Code.INVALID, "sha256")
    assert "corrupt" in info.value.message
    assert list(images.blobs.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "abc", "../../etc/passwd", "A" * 64, "g" * 64])
def test_blob_path_refuses_anything_but_a_sha256(images: ImageStore, bad: str) -> None:
    with pytest.raises(Invalid) as info:
        images.blob_path(bad)
    assert info.value.field == "sha256"


def test_manifest_put_and_get_round_trip(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    digest = manifest.digest
    assert images.has(digest)
    assert images.get_manifest(digest) == manifest
    assert images.list() == [manifest]
    assert (images.manifests / f"{digest}.json").read_bytes() == manifest.canonical()


def test_put_manifest_twice_returns_the_same_digest(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    assert images.put_manifest(manifest) == images.put_manifest(manifest) == manifest.digest
    assert len(images.list()) == 1


def test_manifest_digest_is_stable_and_depends_on_content() -> None:
    disk = Blob(sha256="a" * 64, size=10, virtual_size=1 << 20)
    one = Manifest(name="tiny", root_disk=disk, packages={"b": "2", "a": "1"})
    same = Manifest.model_validate_json(one.model_dump_json())
    reordered = Manifest(name="tiny", root_disk=disk, packages={"a": "1", "b": "2"})
    assert one.digest == same.digest == reordered.digest
    assert one.digest == hashlib.sha256(one.canonical()).hexdigest()
    assert Manifest(name="tiny", version="2", root_disk=disk).digest != one.digest


def test_manifest_size_and_summary_count_every_part() -> None:
    m = Manifest(
        name="tiny",
        kernel=Blob(sha256="a" * 64, size=3),
        root_disk=Blob(sha256="b" * 64, size=4, virtual_size=99),
    )
    assert m.size == 7
    assert m.summary() == {
        "digest": m.digest,
        "name": "tiny",
        "version": "1",
        "arch": "x86_64",
        "size": 7,
        "virtual_size": 99,
    }


def test_put_manifest_naming_a_missing_part_is_not_found(images: ImageStore) -> None:
    manifest = Manifest(name="ghost", root_disk=Blob(sha256="c" * 64, size=1))
    with pytest.raises(NotFound) as info:
        images.put_manifest(manifest)
    assert (info.value.code, info.value.resource) == (Code.NOT_FOUND, "image")
    assert not images.has(manifest.digest)


def test_get_manifest_of_an_unknown_digest_is_not_found(images: ImageStore) -> None:
    with pytest.raises(NotFound) as info:
        images.get_manifest("d" * 64)
    assert (info.value.code, info.value.resource) == (Code.NOT_FOUND, "image")


def test_remove_drops_the_manifest_and_only_its_unshared_parts(
    images: ImageStore, tmp_path: Path
) -> None:
    one = add_image(images, tmp_path / "one", name="one")
    # "two" shares one's kernel but has its own initrd and disk
    two = add_image(images, tmp_path / "two", name="two")
    two = two.model_copy(update={"kernel": one.kernel})
    images.put_manifest(two)
    images.remove(one.digest)
    assert not images.has(one.digest)
    assert images.verify(two.digest) == two
    assert one.kernel is not None and one.initrd is not None
    assert images.blob_path(one.kernel.sha256).exists()
    assert not images.blob_path(one.initrd.sha256).exists()
    assert not images.blob_path(one.root_disk.sha256).exists()


def test_remove_forgets_build_cache_entries_of_the_image(
    images: ImageStore, tmp_path: Path
) -> None:
    manifest = add_image(images, tmp_path / "parts")
    images.record_build("key1", manifest.digest)
    images.remove(manifest.digest)
    assert images.cached_build("key1") is None
    assert not (images.builds / "key1").exists()


def test_verify_passes_an_intact_image(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    assert images.verify(manifest.digest) == manifest


def test_verify_detects_a_corrupt_part(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    _corrupt(images.root_disk_path(manifest))
    with pytest.raises(Invalid) as info:
        images.verify(manifest.digest)
    assert (info.value.code, info.value.resource) == (Code.INVALID, "image")
    assert "corrupt" in info.value.message


def test_verify_detects_a_missing_part(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    kernel = images.kernel_path(manifest)
    assert kernel is not None
    kernel.unlink()
    with pytest.raises(NotFound) as info:
        images.verify(manifest.digest)
    assert info.value.code == Code.NOT_FOUND


def test_paths_for_the_hypervisor_point_at_the_blobs(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    assert manifest.kernel is not None and manifest.initrd is not None
    assert images.kernel_path(manifest) == images.blobs / manifest.kernel.sha256
    assert images.initrd_path(manifest) == images.blobs / manifest.initrd.sha256
    assert images.root_disk_path(manifest) == images.blobs / manifest.root_disk.sha256
    bare = manifest.model_copy(update={"kernel": None, "initrd": None})
    assert images.kernel_path(bare) is None and images.initrd_path(bare) is None


def test_build_cache_records_and_finds_a_build(images: ImageStore, tmp_path: Path) -> None:
    manifest = add_image(images, tmp_path / "parts")
    assert images.cached_build("recipe-key") is None
    images.record_build("recipe-key", manifest.digest)
    assert images.cached_build("recipe-key") == manifest.digest


def test_build_cache_ignores_a_build_whose_manifest_is_gone(images: ImageStore) -> None:
    images.ensure()
    images.record_build("recipe-key", "e" * 64)
    assert images.cached_build("recipe-key") is None


def test_list_of_an_empty_store_is_empty(images: ImageStore) -> None:
    assert images.list() == []
