"""Every error a user can run into while bringing up Corral or running an instance: a message
naming the problem and the fix, a 4xx from the API, and nothing left half-made."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import config
from corral.errors import EnvironmentProblem
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.node import agent
from tests.harness import Daemon, cmdline, new_daemon, next_subnet


# -- bringing Corral up ------------------------------------------------------------------------
def test_up_without_qemu_says_which_package_and_leaves_nothing(tmp_path: Path) -> None:
    d = new_daemon(CORRAL_QEMU="/nonexistent/qemu-system-x86_64")
    try:
        res = d.cli("up", "--port", str(d.port), "--subnet", d.subnet)
        assert res.rc == 1
        assert "QEMU is missing" in res.err and "qemu-system-x86" in res.err
        assert not d.settings.pidfile.exists()
        assert (
            d.settings.namespace
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
    finally:
        d.teardown()


def test_up_as_non_root_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(agent.os, "geteuid", lambda: 1000)
    with pytest.raises(EnvironmentProblem, match=r"must run as root.*sudo"):
        agent.check_host(config.load(tmp_path))


def test_up_with_an_unwritable_state_dir_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    d = new_daemon()
    try:
        res = d.cli("--state-dir", str(blocker / "state"), "up", "--port", str(d.port))
        assert res.rc == 1
        assert f"state directory {blocker / 'state'} is not writable" in res.err
        assert "--state-dir" in res.err
    finally:
        d.teardown()


def test_up_twice_on_one_state_dir_is_refused(corral: Daemon) -> None:
    res = corral.cli("up", "--port", str(corral.port + 1 if corral.port < 65000 else 1025))
    assert res.rc == 1 and "already runs with state directory" in res.err


# -- running instances -----------------------------------------------------------------------
def _api(corral: Daemon, method: str, path: str, **kw: object) -> httpx.Response:
    c = corral.client()
    return c.http.request(method, path, **kw)  # type: ignore[arg-type]


def test_unknown_image(corral: Daemon) -> None:
    res = corral.cli("run", "no-such-image", "--name", "e1")
    assert res.rc == 1 and "image no-such-image does not exist" in res.err
    assert "corral image ls" in res.err
    r = _api(corral, "POST", "/v1/instances", json={"image": "no-such-image"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["field"] == "image"


@pytest.mark.parametrize("memory", ["12x", "10M", "0", "1.5K"])
def test_bad_memory_size(corral: Daemon, memory: str) -> None:
    r = _api(corral, "POST", "/v1/instances", json={"image": "tiny", "memory": memory})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["field"] == "memory" and "256M" in err["message"]
    assert corral.cli("run", "tiny", "--memory", memory).rc == 1


def test_duplicate_name(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "dup1", "--memory", "64M", "--no-wait").ok()
    try:
        res = corral.cli("run", "tiny", "--name", "dup1")
        assert res.rc == 1 and "already exists" in res.err
        r = _api(corral, "POST", "/v1/instances", json={"image": "tiny", "name": "dup1"})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "exists" and r.json()["error"]["field"] == "name"
    finally:
        corral.cli("rm", "--force", "dup1").ok()


def test_missing_key_file_creates_nothing(corral: Daemon) -> None:
    before = corral.cli("ls", "--all", "--json").ok().out
    res = corral.cli("run", "tiny", "--name", "nokey", "--key", "/nonexistent/id.pub")
    assert res.rc == 1 and "key file /nonexistent/id.pub does not exist" in res.err
    res = corral.cli("run", "tiny", "--name", "nokey", "--key", "no-such-pair")
    assert res.rc == 1 and "key pair no-such-pair does not exist" in res.err
    assert corral.cli("ls", "--all", "--json").ok().out == before


def test_bad_name_and_bad_fields_are_400_with_the_field(corral: Daemon) -> None:
    r = _api(corral, "POST", "/v1/instances", json={"image": "tiny", "name": "Bad_Name"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "name"
    r = _api(corral, "POST", "/v1/instances", json={"image": "tiny", "cpus": 0})
    assert r.status_code == 400 and r.json()["error"]["field"] == "cpus"
    r = _api(corral, "POST", "/v1/instances", json={"image": "tiny", "colour": "red"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "colour"
    r = _api(corral, "GET", "/v1/instances/no-such-instance")
    assert r.status_code == 404 and r.json()["error"]["resource"] == "instance"
    r = httpx.get(f"{corral.url}/v1/instances")
    assert r.status_code == 401 and "ACCESS_KEY_ID:SECRET" in r.json()["error"]["message"]


# -- a small network: no free address; a launch that fails leaves nothing ----------------------
@pytest.fixture(scope="module")
def small() -> Iterator[Daemon]:
    d = new_daemon(subnet=next_subnet(prefix=29))  # 5 usable addresses
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        _add_broken_image(d.settings.images_dir)
        d.stop()
        d.start()  # picks up the broken image from the store
        yield d
    finally:
        d.teardown()


def _add_broken_image(images: Path) -> None:
    """An image whose root disk is not a qcow2 at all: QEMU refuses to start it."""
    store = ImageStore(images)
    tiny = next(m for m in store.list() if m.name == "tiny")
    junk = images / "tmp" / "junk.qcow2"
    junk.write_bytes(b"this is not a disk image\n" * 100)
    blob = store.add_blob(junk, fmt="qcow2", virtual_size=1 << 20, move=True)
    broken = Manifest(
        name="broken",
        kind="busybox",
        kernel=tiny.kernel,
        initrd=tiny.initrd,
        root_disk=blob,
        cmdline=tiny.cmdline,
    )
    store.put_manifest(broken)


def test_a_failed_launch_leaves_no_disk_tap_lease_or_process(small: Daemon) -> None:
    res = small.cli("run", "broken", "--name", "bad1", "--memory", "64M")
    assert res.rc == 1 and "failed" in res.err and "qcow2" in res.err
    info = json.loads(small.cli("show", "bad1", "--json").ok().out)
    assert info["state"] == "terminated" and "Server.InternalError" in info["state_reason"]
    assert info["private_ip"] is None
    assert not (small.state_dir / "instances" / info["id"]).exists()
    links = small.nsexec("ip", "-br", "link").stdout
    assert "t" + info["id"][2:14] not in links
    hosts = "".join(p.read_text() for p in (small.state_dir / "networks").glob("*/dhcp-hosts"))
    assert info["mac"] not in hosts
    assert not any(
        f"process=corral:{info['id']}".encode() in cmdline(p)
        for p in os.listdir("/proc")
        if p.isdigit()
    )


def test_no_free_address(small: Daemon) -> None:
    names = [f"fill{i}" for i in range(5)]
    try:
        for n in names:
            small.cli("run", "tiny", "--name", n, "--memory", "64M", "--no-wait").ok()
        res = small.cli("run", "tiny", "--name", "one-too-many", "--memory", "64M")
        assert res.rc == 1 and "no free address" in res.err and "--subnet" in res.err
        r = small.client().http.post("/v1/instances", json={"image": "tiny", "memory": "64M"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_resources"
        assert "one-too-many" not in small.cli("ls", "--all").ok().out
    finally:
        small.cli("rm", "--force", *names)
