"""The pieces of QEMU's confinement that need no root: its command line (sandbox, disks and tap
only as descriptors), the per-instance uid, and the agent's refusal to follow anything but a
socket into QEMU's directory. The whole of it runs on real VMs in
tests/integration/test_confinement.py."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.node.driver import jail, qemu
from corral.node.driver.qmp import Qmp, QmpUnavailable
from corral.node.spec import InstanceSpec, NetworkSpec, VolumeAttachment


@pytest.fixture
def fake_qemu() -> Iterator[None]:
    qemu.configure("/bin/true")
    yield
    qemu.configure(qemu.QEMU)


def _spec(**kw: object) -> InstanceSpec:
    net = NetworkSpec(
        id="n", namespace="ns", bridge="br", cidr="10.0.0.0/24", gateway="10.0.0.1", domain="d"
    )
    return InstanceSpec(
        id="i-0123456789abcdef0",
        name="web",
        image="sha256:x",
        memory=256 << 20,
        disk_size=1 << 30,
        mac="52:54:00:00:00:01",
        network=net,
        tap="tap0",
        **kw,  # type: ignore[arg-type]
    )


def test_qemu_gets_the_sandbox_and_its_disks_and_tap_only_as_descriptors(
    tmp_path: Path, fake_qemu: None
) -> None:
    paths = qemu.Paths(dir=tmp_path / "inst", run=tmp_path / "run")
    chain = qemu.Chain([(paths.disk, "qcow2"), (tmp_path / "images/base.qcow2", "qcow2")])
    spec = _spec(volumes=[VolumeAttachment(id="vol-0a", device="/dev/sdf")])
    argv, fds = qemu.argv(
        spec,
        paths,
        accel="tcg",
        machine="pc",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        cmdline="console=ttyS0",
        root=chain,
        volume_dir=tmp_path / "volumes",
    )
    assert argv[argv.index("-sandbox") + 1] == (
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    )
    text = " ".join(argv)
    # no disk by path: the jail has none of them
    for path in (paths.disk, tmp_path / "images/base.qcow2", tmp_path / "volumes/vol-0a.qcow2"):
        assert str(path) not in text
    assert "ifname=" not in text and f"tap,id=net0,fd={fds.tap_fd}" in text
    by_path = {Path(s.path): s for s in fds.specs}
    assert by_path[paths.disk].write and not by_path[tmp_path / "images/base.qcow2"].write
    assert by_path[tmp_path / "volumes/vol-0a.qcow2"].write
    numbers = [s.fd for s in fds.specs] + [fds.tap_fd]
    assert sorted(numbers) == list(range(3, 3 + len(numbers)))
    for s in fds.specs:
        assert f"fd={s.fd},set={s.fd}," in text
    # the root node spells out its backing chain, the backing read-only, each by fd set
    root = json.loads(argv[argv.index("-blockdev") + 1])
    assert root["node-name"] == "root"
    assert root["file"]["filename"] == f"/dev/fdset/{by_path[paths.disk].fd}"
    base = root["backing"]
    assert base["read-only"] is True and base["backing"] is None
    assert base["file"]["filename"] == f"/dev/fdset/{by_path[tmp_path / 'images/base.qcow2'].fd}"
    # sockets and the pid file stay at their paths (the run directory is in the jail)
    assert f"unix:{paths.qmp},server=on,wait=off" in argv
    assert qemu.is_ours(argv, paths)


def test_each_instance_gets_its_own_stable_uid(tmp_path: Path) -> None:
    for iid in ("i-a", "i-b"):
        (tmp_path / iid).mkdir()
    a = jail.uid_for(tmp_path, "i-a")
    assert a >= jail.UID_BASE and a < jail.UID_BASE + jail.UID_SPAN
    assert jail.uid_for(tmp_path, "i-a") == a  # kept in the instance's directory
    # a clash is resolved: i-b's hash is made to land on i-a's uid
    (tmp_path / "i-b" / "uid").unlink(missing_ok=True)
    (tmp_path / "i-c").mkdir()
    (tmp_path / "i-c" / "uid").write_text(str(a))
    b = jail.uid_for(tmp_path, "i-b")
    assert b != a
    assert (tmp_path / "i-b" / "uid").read_text() == str(b)


async def test_the_agent_does_not_follow_a_symlink_where_qemus_socket_should_be(
    tmp_path: Path,
) -> None:
    # an unprivileged QEMU owns its run directory: a symlink there to another instance's QMP
    # socket must not make the agent (root) talk to that other QEMU
    other = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(other))
    server.listen()
    link = tmp_path / "qmp.sock"
    link.symlink_to(other)
    try:
        with pytest.raises(QmpUnavailable) as info:
            await Qmp(link, "test").connect(timeout=5)
        assert "not a socket" in str(info.value)
    finally:
        server.close()
