"""The small pieces of image building: the partition table, fixed identities, qcow2 headers,
the host's apt mirrors, tidying a root tree, and "disk full" errors."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from corral.errors import Code, NoResources
from corral.images import apt, disk, qcow, tree
from corral.images.space import is_no_space, space_errors
from corral.proc import CommandFailed
from tests.unit.images.fakes import qcow2_bytes


def test_the_partition_table_holds_one_linux_partition_from_1mib_to_the_end() -> None:
    table = disk.mbr(2 << 30, 0x12345678)
    assert len(table) == 512 and table[510:] == b"\x55\xaa"
    assert struct.unpack("<I", table[440:444])[0] == 0x12345678
    status, ptype, start, count = table[446], table[450], *struct.unpack("<II", table[454:462])
    assert (status, ptype, start) == (0, 0x83, 2048)
    assert (start + count) * 512 == 2 << 30
    assert table[462:510] == b"\0" * 48  # no other partitions


def test_identities_derive_from_the_build_key() -> None:
    assert disk.fixed_uuid("k", "rootfs") == disk.fixed_uuid("k", "rootfs")
    assert disk.fixed_uuid("k", "rootfs") != disk.fixed_uuid("k", "disk")
    assert disk.fixed_uuid("k", "rootfs") != disk.fixed_uuid("k2", "rootfs")


def test_qcow2_headers_are_read_without_qemu(tmp_path: Path) -> None:
    p = tmp_path / "overlay"
    p.write_bytes(qcow2_bytes("a" * 64, b"data", size=1 << 30))
    h = qcow.header(p)
    assert h is not None
    assert (h.version, h.backing, h.virtual_size, h.external_data) == (3, "a" * 64, 1 << 30, False)
    assert qcow.sniff(p) == "qcow2"
    raw = tmp_path / "raw"
    raw.write_bytes(b"\0" * 4096)
    assert qcow.header(raw) is None and qcow.sniff(raw) == "raw"


def test_check_overlay_names_what_is_wrong(tmp_path: Path) -> None:
    p = tmp_path / "d"
    p.write_bytes(qcow2_bytes("b" * 64))
    qcow.check_overlay(p, "b" * 64, "x")
    with pytest.raises(Exception, match="overlay on 'bbbb"):
        qcow.check_overlay(p, "c" * 64, "x")
    p.write_bytes(qcow2_bytes(None, crypt=1))
    with pytest.raises(Exception, match="encryption"):
        qcow.check_overlay(p, None, "x")


def test_host_mirrors_come_from_deb822_and_one_line_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (d / "other.list").write_text("deb [arch=amd64] https://apt.example/node nodistro main\n")
    monkeypatch.setattr(apt, "SOURCES_DIRS", (d, tmp_path))
    m = apt.host_mirrors("bookworm")
    assert (m.main, m.security) == (
        "http://mirror.example/debian",
        "http://sec.example/debian-security",
    )
    assert apt.host_mirrors("trixie").main == apt.DEFAULT_MIRROR
    assert apt.host_mirrors("bookworm", main="http://x/").main == "http://x"


def test_sources_name_the_suite_its_updates_and_security() -> None:
    text = apt.Mirrors("http://m/debian", "http://s/sec").sources("bookworm")
    lines = [line.split()[-2:] for line in text.splitlines()]
    assert lines == [
        ["bookworm", "main"],
        ["bookworm-updates", "main"],
        ["bookworm-security", "main"],
    ]


def test_shadow_dates_are_set_to_the_build_epoch(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    shadow = tmp_path / "etc/shadow"
    shadow.write_text("root:*:20778:0:99999:7:::\ndebian:!::0:99999:7:::\n")
    shadow.chmod(0o640)
    tree.normalize_shadow(tmp_path, 1747699200)
    assert shadow.read_text() == "root:*:20228:0:99999:7:::\ndebian:!::0:99999:7:::\n"
    assert shadow.stat().st_mode & 0o777 == 0o640


def test_times_newer_than_the_epoch_are_clamped_older_ones_kept(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("from a package")
    new.write_text("made during the build")
    os.utime(old, (1600000000, 1600000000))
    os.symlink("old", tmp_path / "link")
    tree.clamp_times(tmp_path, 1700000000)
    assert os.stat(old).st_mtime == 1600000000
    assert os.stat(new).st_mtime == 1700000000
    assert os.lstat(tmp_path / "link").st_mtime == 1700000000
    assert os.stat(tmp_path).st_mtime == 1700000000


def test_remove_globs_keeps_log_directories(tmp_path: Path) -> None:
    (tmp_path / "var/log/apt").mkdir(parents=True)
    (tmp_path / "var/log/apt/history.log").write_text("x")
    (tmp_path / "var/log/dpkg.log").write_text("x")
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (tmp_path / "etc/ssh/sshd_config").write_text("keep")
    tree.remove_globs(tmp_path, ["var/log/**/*", "etc/ssh/ssh_host_*"])
    assert (tmp_path / "var/log/apt").is_dir()
    assert not (tmp_path / "var/log/dpkg.log").exists()
    assert sorted(p.name for p in (tmp_path / "etc/ssh").iterdir()) == ["sshd_config"]


def test_build_dir_removes_itself(tmp_path: Path) -> None:
    with tree.build_dir(tmp_path, "build-") as work:
        (work / "f").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_becomes_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoResources) as info, space_errors(tmp_path, "building tiny"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.code == Code.NO_RESOURCES and info.value.field == "disk"
    assert "building tiny" in info.value.message and str(tmp_path) in info.value.message
    failed = CommandFailed(["mke2fs"], 1, "mke2fs: No space left on device while writing")
    assert is_no_space(failed)
    with pytest.raises(NoResources), space_errors(tmp_path, "building"):
        raise failed


def test_other_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), space_errors(tmp_path, "x"):
        raise PermissionError(errno.EACCES, "denied")
    assert not is_no_space(ValueError("x"))


def _read_cpio(data: bytes) -> list[tuple[str, int, int, bytes]]:
    """(name, inode, mode, bytes) of each newc entry, up to the trailer."""
    out: list[tuple[str, int, int, bytes]] = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = f[11], f[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, f[0], f[1], body))


def test_cpio_is_the_same_for_the_same_tree_whatever_the_host_did(tmp_path: Path) -> None:
    from corral.images import cpio

    archives = []
    for n in ("a", "b"):
        root = tmp_path / n
        (root / "bin").mkdir(parents=True)
        (root / "bin/busybox").write_bytes(b"\x7fELF")
        (root / "bin/busybox").chmod(0o755)
        os.symlink("busybox", root / "bin/sh")
        (root / "init").write_text("#!/bin/sh\n")
        os.utime(root / "init", (1000 * (n == "a"), 5))  # host times must not matter
        cpio.write(root, tmp_path / f"{n}.cpio", 1700000000)
        archives.append((tmp_path / f"{n}.cpio").read_bytes())
    assert archives[0] == archives[1]
    entries = _read_cpio(archives[0])
    assert [(e[0], e[1]) for e in entries] == [
        ("bin", 1),
        ("bin/busybox", 2),
        ("bin/sh", 3),
        ("init", 4),
    ]
    assert entries[2][3] == b"busybox" and entries[1][2] == 0o100755
    assert len(archives[0]) % 4 == 0
