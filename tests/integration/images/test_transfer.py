"""Moving images between two Corrals with their own state directories: whole exports, deltas
against a base (sha256 checked at both ends), disk-file imports, and every refusal leaving the
receiving store as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_daemon
from tests.integration.images.conftest import image


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _store_files(d: Daemon) -> set[str]:
    root = d.state_dir / "images"
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.parent.name == "exports"
    }


@pytest.mark.slow
@pytest.mark.long  # needs the Debian build: bench/long, not scripts/test
def test_debian_delta_round_trip_between_two_daemons(
    corral: Daemon, other: Daemon, debian: dict[str, Any], tools: dict[str, Any], tmp_path: Path
) -> None:
    whole, delta = tmp_path / "debian.tar", tmp_path / "tools-delta.tar"
    out = corral.cli("image", "export", "debian:12", "-o", str(whole), timeout=900).ok().out
    assert _sha(whole) in out
    out = (
        corral.cli(
            "image",
            "export",
            "debian-tools:12.1",
            "--delta-from",
            "debian:12",
            "-o",
            str(delta),
            timeout=900,
        )
        .ok()
        .out
    )
    assert _sha(delta) in out
    assert delta.stat().st_size * 10 < whole.stat().st_size

    # a delta needs its base: refused, and the receiving store is left as it was
    before = _store_files(other)
    res = other.cli("image", "import", str(delta), timeout=600)
    assert res.rc != 0 and "is a delta against debian:12" in res.err
    assert "nothing was written" in res.err
    assert _store_files(other) == before

    other.cli("image", "import", str(whole), "--sha256", _sha(whole), timeout=900).ok()
    other.cli("image", "import", str(delta), "--sha256", _sha(delta), timeout=900).ok()
    got = image(other, "debian-tools:12.1")
    # the same content (digest); the id is the importing account's own record of it (an
    # account-owned image's id names its account, and the two daemons' admins differ)
    assert got["digest"] == tools["digest"]
    assert got["manifest"] == tools["manifest"]
    assert got["base"] == debian["digest"]
    out = other.cli("image", "verify", "debian-tools:12.1", timeout=600).ok().out
    assert "2 image(s)" in out
    # an overlay in the receiving store points at its base's disk, by sha256
    disk = other.state_dir / "images/blobs" / got["manifest"]["root_disk"]["sha256"]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["backing-filename"] == debian["manifest"]["root_disk"]["sha256"]


def test_tiny_round_trip_boots_on_the_other_daemon(
    corral: Daemon, other: Daemon, tmp_path: Path
) -> None:
    archive = tmp_path / "tiny.tar"
    corral.cli("image", "export", "tiny", "-o", str(archive), timeout=300).ok()
    other.cli("image", "import", str(archive), timeout=300).ok()
    assert image(other, "tiny")["digest"] == image(corral, "tiny")["digest"]
    other.cli("run", "tiny", "--name", "moved1", "--disk", "1G").ok()
    try:
        out = other.ssh("moved1", "hostname; df -k / | tail -1").ok().out
        assert out.split()[0] == "moved1"
        assert int(out.split()[2]) > 900_000  # tiny grew its 512M root to the 1G disk
    finally:
        other.cli("rm", "moved1")


def test_a_delta_against_another_base_is_refused_at_export(corral: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "x.tar"
    res = corral.cli("image", "export", "tiny", "--delta-from", "tiny", "-o", str(out))
    assert res.rc != 0 and "not built on" in res.err
    assert not out.exists()


def test_a_corrupt_archive_is_refused_and_nothing_is_written(
    corral: Daemon, tmp_path: Path
) -> None:
    good, bad = tmp_path / "tiny.tar", tmp_path / "bad.tar"
    corral.cli("image", "export", "tiny", "-o", str(good), timeout=300).ok()
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    fresh = new_daemon()  # an empty store: every part of the archive has to be read
    try:
        fresh.start()
        before = _store_files(fresh)
        res = fresh.cli("image", "import", str(bad), timeout=300)
        assert res.rc != 0 and "corrupt" in res.err and "nothing was written" in res.err
        assert _store_files(fresh) == before
        res = fresh.cli("image", "import", str(good), "--sha256", "0" * 64)
        assert res.rc != 0 and "sha256" in res.err
        assert _store_files(fresh) == before
        fresh.cli("image", "import", str(good), timeout=300).ok()
        fresh.cli("image", "verify", "tiny").ok()
    finally:
        fresh.teardown()


def test_raw_and_qcow2_disks_import_and_boot(corral: Daemon, tmp_path: Path) -> None:
    tiny = image(corral, "tiny")
    blob = corral.state_dir / "images/blobs" / tiny["manifest"]["root_disk"]["sha256"]
    raw, qcow = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(blob), str(raw)], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(blob), str(qcow)], check=True)
    corral.cli(
        "image",
        "import",
        str(raw),
        "--name",
        "rawtiny",
        "--boot-from",
        "tiny",
        "--sha256",
        _sha(raw),
        timeout=300,
    ).ok()
    corral.cli(
        "image", "import", str(qcow), "--name", "qcowtiny", "--boot-from", "tiny", timeout=300
    ).ok()
    for name, vm in (("rawtiny", "raw1"), ("qcowtiny", "qcow1")):
        got = image(corral, name)
        assert got["kind"] == "imported", name
        assert got["manifest"]["kernel"] == tiny["manifest"]["kernel"], name
        assert got["virtual_size"] == tiny["virtual_size"], name
        corral.cli("run", name, "--name", vm).ok()
        try:
            # booted from the imported disk: the guest's root is that image's file system
            assert corral.ssh(vm, "hostname").ok().out.strip() == vm
        finally:
            corral.cli("rm", vm).ok()
        corral.cli("image", "rm", name).ok()


def test_unsafe_or_unknown_disks_are_refused(corral: Daemon, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
            str(overlay),
            "64M",
        ],
        check=True,
    )
    res = corral.cli("image", "import", str(overlay), "--name", "sneaky")
    assert res.rc != 0 and "overlay on '/etc/shadow'" in res.err
    tiny = tmp_path / "tiny.raw"
    tiny.write_bytes(b"\0" * 4096)
    res = corral.cli("image", "import", str(tiny), "--name", "tiny-disk")
    assert res.rc != 0 and "at least 1 MiB" in res.err
    res = corral.cli("image", "import", str(tiny))
    assert res.rc != 0 and "name is required" in res.err
    names = {i.name for i in corral.client().image_list()}
    assert not {"sneaky", "tiny-disk"} & names
    assert list((corral.state_dir / "images/tmp").iterdir()) == []


def test_verify_finds_a_corrupt_part_and_an_export_refuses_to_ship_it(
    corral: Daemon, other: Daemon, tmp_path: Path
) -> None:
    archive = tmp_path / "tiny.tar"
    corral.cli("image", "export", "tiny", "-o", str(archive), timeout=300).ok()
    other.cli("image", "import", str(archive), timeout=300).ok()
    other.cli("image", "verify", "tiny").ok()
    kernel = other.state_dir / "images/blobs" / image(other, "tiny")["manifest"]["kernel"]["sha256"]
    saved = kernel.read_bytes()
    os.chmod(kernel, 0o644)
    kernel.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    try:
        res = other.cli("image", "verify", "tiny")
        assert res.rc != 0 and "corrupt" in res.err and kernel.name in res.err
        res = other.cli("image", "export", "tiny", "-o", str(tmp_path / "again.tar"))
        assert res.rc != 0 and "corrupt" in res.err
    finally:
        kernel.write_bytes(saved)
        os.chmod(kernel, 0o444)
    other.cli("image", "verify", "tiny").ok()


def test_an_image_in_use_cannot_be_removed_and_a_tag_shares_it(corral: Daemon) -> None:
    corral.cli("image", "tag", "tiny", "tiny-stable:1").ok()
    corral.cli("run", "tiny-stable:1", "--name", "inuse1").ok()
    try:
        res = corral.cli("image", "rm", "tiny-stable:1")
        assert res.rc != 0 and "used by inuse1" in res.err
    finally:
        corral.cli("rm", "inuse1")
    corral.cli("image", "rm", "tiny-stable:1").ok()
    corral.cli("image", "verify", "tiny").ok()  # the tag's removal kept the image
