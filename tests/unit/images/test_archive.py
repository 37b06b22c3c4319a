"""Export archives and deltas between two image stores: what an archive holds, what an import
checks, and that a refused import writes nothing."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from corral.errors import Code, Invalid, NoResources, NotFound
from corral.images import archive
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from tests.unit.images.fakes import add_base, add_derived


@pytest.fixture
def here(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "here")


@pytest.fixture
def there(tmp_path: Path) -> ImageStore:
    s = ImageStore(tmp_path / "there")
    s.ensure()
    return s


def _snapshot(store: ImageStore) -> set[str]:
    return {str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()}


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_a_whole_export_carries_the_image_and_its_bases(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    tools = add_derived(here, tmp_path / "w", base)
    out = tmp_path / "tools.tar"
    index = archive.export(here, tools.digest, out)
    assert index.manifests == [base.digest, tools.digest] and index.delta_from is None
    names = _members(out)
    assert names[0] == archive.INDEX
    assert len([n for n in names if n.startswith("blobs/")]) == 4  # kernel, initrd, 2 disks
    got = archive.import_archive(there, out)
    assert got.image == tools.digest
    assert there.verify(tools.digest).digest == tools.digest
    assert there.get_manifest(base.digest) == base


def test_a_delta_carries_only_what_the_base_lacks(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    tools = add_derived(here, tmp_path / "w", base)
    archive.import_archive(there, _export(here, base.digest, tmp_path / "base.tar"))
    delta = _export(here, tools.digest, tmp_path / "delta.tar", base.digest)
    assert sorted(_members(delta)) == sorted(
        [archive.INDEX, f"manifests/{tools.digest}.json", f"blobs/{tools.root_disk.sha256}.zst"]
    )
    index = archive.import_archive(there, delta)
    assert (index.image, index.delta_from, index.delta_from_name) == (
        tools.digest,
        base.digest,
        "debian:12",
    )
    there.verify(tools.digest)
    assert (
        there.blob_path(tools.root_disk.sha256).read_bytes()
        == here.blob_path(tools.root_disk.sha256).read_bytes()
    )


def _export(store: ImageStore, digest: str, out: Path, base: str | None = None) -> Path:
    archive.export(store, digest, out, base)
    return out


def test_the_same_image_exports_to_the_same_bytes(here: ImageStore, tmp_path: Path) -> None:
    base = add_base(here, tmp_path / "w")
    a = _export(here, base.digest, tmp_path / "a.tar")
    b = _export(here, base.digest, tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()


def test_a_delta_from_an_image_that_is_not_the_base_is_refused_at_export(
    here: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    other = add_base(here, tmp_path / "w2", name="other", salt=b"2")
    tools = add_derived(here, tmp_path / "w", base)
    out = tmp_path / "x.tar"
    with pytest.raises(Invalid) as info:
        archive.export(here, tools.digest, out, other.digest)
    assert info.value.field == "delta_from"
    assert "its base is debian:12" in info.value.message
    with pytest.raises(Invalid) as info:
        archive.export(here, base.digest, out, other.digest)
    assert "not built on another image" in info.value.message
    assert not out.exists() and list(out.parent.glob(".x.tar*")) == []


def test_a_delta_without_its_base_is_refused_and_nothing_is_written(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    tools = add_derived(here, tmp_path / "w", base)
    delta = _export(here, tools.digest, tmp_path / "delta.tar", base.digest)
    before = _snapshot(there)
    with pytest.raises(NotFound) as info:
        archive.import_archive(there, delta)
    assert info.value.field == "delta_from"
    assert "debian:12" in info.value.message and "nothing was written" in info.value.message
    assert _snapshot(there) == before


def test_a_delta_against_another_build_of_the_base_names_both(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    tools = add_derived(here, tmp_path / "w", base)
    theirs = add_base(there, tmp_path / "w2", salt=b"another build")  # also debian:12
    delta = _export(here, tools.digest, tmp_path / "delta.tar", base.digest)
    before = _snapshot(there)
    with pytest.raises(NotFound) as info:
        archive.import_archive(there, delta)
    assert (
        f"this store's debian:12 is {theirs.digest[:12]}, a different build" in info.value.message
    )
    assert _snapshot(there) == before


def test_a_delta_onto_a_corrupt_base_is_refused(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    tools = add_derived(here, tmp_path / "w", base)
    archive.import_archive(there, _export(here, base.digest, tmp_path / "base.tar"))
    disk = there.blob_path(base.root_disk.sha256)
    os.chmod(disk, 0o644)
    disk.write_bytes(disk.read_bytes()[:-1] + b"!")
    with pytest.raises(Invalid) as info:
        archive.import_archive(there, _export(here, tools.digest, tmp_path / "d.tar", base.digest))
    assert "corrupt" in info.value.message
    assert not there.has(tools.digest)


def _rewrite(src: Path, dst: Path, change: dict[str, bytes]) -> None:
    """Copy a tar archive, replacing the named members' bytes."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for m in tin.getmembers():
            data = change.get(m.name)
            if data is None:
                fh = tin.extractfile(m)
                assert fh is not None
                data = fh.read()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_a_corrupt_part_is_refused_and_nothing_is_written(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    good = _export(here, base.digest, tmp_path / "good.tar")
    name = f"blobs/{base.kernel.sha256}.zst"  # type: ignore[union-attr]
    bad = tmp_path / "bad.tar"
    _rewrite(good, bad, {name: zstandard.ZstdCompressor().compress(b"kernel!" + b"x" * 3000)})
    before = _snapshot(there)
    with pytest.raises(Invalid) as info:
        archive.import_archive(there, bad)
    assert "corrupt" in info.value.message and "nothing was written" in info.value.message
    assert _snapshot(there) == before


def test_a_part_that_is_not_zstd_is_refused(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    bad = tmp_path / "bad.tar"
    _rewrite(
        _export(here, base.digest, tmp_path / "g.tar"),
        bad,
        {f"blobs/{base.root_disk.sha256}.zst": b"garbage"},
    )
    with pytest.raises(Invalid):
        archive.import_archive(there, bad)
    assert not there.has(base.digest)


def test_a_part_larger_than_its_manifest_says_is_refused(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (8 << 20))
    bad = tmp_path / "bad.tar"
    _rewrite(
        _export(here, base.digest, tmp_path / "g.tar"),
        bad,
        {f"blobs/{base.root_disk.sha256}.zst": bomb},
    )
    with pytest.raises(Invalid):
        archive.import_archive(there, bad)
    assert list(there.tmp.iterdir()) == []


def test_a_tampered_manifest_is_refused(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    data = json.loads(base.canonical())
    data["cmdline"] = "init=/bin/sh"
    bad = tmp_path / "bad.tar"
    _rewrite(
        _export(here, base.digest, tmp_path / "g.tar"),
        bad,
        {f"manifests/{base.digest}.json": json.dumps(data).encode()},
    )
    with pytest.raises(Invalid) as info:
        archive.import_archive(there, bad)
    assert "does not match its sha256" in info.value.message


def test_an_overlay_pointing_elsewhere_is_refused(
    here: ImageStore, there: ImageStore, tmp_path: Path
) -> None:
    from tests.unit.images.fakes import part, qcow2_bytes

    base = add_base(here, tmp_path / "w")
    evil_disk = here.add_blob(part(tmp_path, "evil", qcow2_bytes("/etc/shadow", b"x")), fmt="qcow2")
    evil = Manifest(name="evil", root_disk=evil_disk, base=base.digest)
    here.put_manifest(evil)
    out = tmp_path / "evil.tar"
    archive.export(here, evil.digest, out)
    with pytest.raises(Invalid) as info:
        archive.import_archive(there, out)
    assert "/etc/shadow" in info.value.message
    assert not there.has(evil.digest) and not there.has(base.digest)


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "blobs/../../x", "blobs/abc.zst", "README"])
def test_unexpected_members_are_refused(
    here: ImageStore, there: ImageStore, tmp_path: Path, name: str
) -> None:
    base = add_base(here, tmp_path / "w")
    good = _export(here, base.digest, tmp_path / "g.tar")
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as tin, tarfile.open(bad, "w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m))
        info = tarfile.TarInfo(name)
        info.size = 1
        tout.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(Invalid) as err:
        archive.import_archive(there, bad)
    assert "unexpected member" in err.value.message
    assert not there.has(base.digest)


def test_a_file_that_is_not_an_archive_is_invalid(there: ImageStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file" * 100)
    assert not archive.is_archive(junk)
    with pytest.raises(Invalid) as info:
        archive.import_archive(there, junk)
    assert info.value.field == "file"


def test_importing_twice_is_a_no_op(here: ImageStore, there: ImageStore, tmp_path: Path) -> None:
    base = add_base(here, tmp_path / "w")
    out = _export(here, base.digest, tmp_path / "b.tar")
    archive.import_archive(there, out)
    before = _snapshot(there)
    archive.import_archive(there, out)
    assert _snapshot(there) == before


def test_an_import_that_does_not_fit_is_refused_before_writing(
    here: ImageStore, there: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    base = add_base(here, tmp_path / "w")
    out = _export(here, base.digest, tmp_path / "b.tar")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(100 << 20, 99 << 20, 1 << 20))
    before = _snapshot(there)
    with pytest.raises(NoResources) as info:
        archive.import_archive(there, out)
    assert info.value.code == Code.NO_RESOURCES and info.value.field == "disk"
    assert "nothing was kept" in info.value.message
    assert _snapshot(there) == before


def test_an_export_of_a_corrupt_part_is_refused_and_leaves_no_file(
    here: ImageStore, tmp_path: Path
) -> None:
    base = add_base(here, tmp_path / "w")
    kernel = here.blob_path(base.kernel.sha256)  # type: ignore[union-attr]
    os.chmod(kernel, 0o644)
    kernel.write_bytes(b"bit rot")
    out = tmp_path / "x.tar"
    with pytest.raises(Invalid) as info:
        archive.export(here, base.digest, out)
    assert "corrupt in this store" in info.value.message
    assert list(tmp_path.glob("*x.tar*")) == []
