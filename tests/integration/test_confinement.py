"""Each instance's QEMU is confined: its own unprivileged uid, no capabilities, a seccomp
sandbox, a root of its own (a jail holding only its kernel, initrd, console log and sockets;
disks come as open descriptors), and no way to another instance's disk. Hot-plug, live snapshots
and the console still work from inside the jail."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from corral.node.driver import cgroups
from tests.harness import Daemon, wait_for


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _show(corral: Daemon, name: str) -> dict[str, object]:
    return dict(json.loads(corral.cli("show", name, "--json").ok().out))


def _as_uid(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


def test_qemu_runs_as_its_own_user_sandboxed_in_a_jail(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "jail1", "--memory", "192M").ok()
    corral.cli("run", "tiny", "--name", "jail2", "--memory", "192M").ok()
    one, two = _show(corral, "jail1"), _show(corral, "jail2")
    pid1, pid2 = int(str(one["pid"])), int(str(two["pid"]))
    st1, st2 = _status(pid1), _status(pid2)

    # an unprivileged uid of its own, no groups, no capabilities
    uid1, uid2 = int(st1["Uid"].split()[0]), int(st2["Uid"].split()[0])
    assert set(st1["Uid"].split()) == {str(uid1)} and set(st1["Gid"].split()) == {str(uid1)}
    assert uid1 >= 1 << 30 and uid2 >= 1 << 30 and uid1 != uid2
    assert st1["Groups"] == ""
    assert int(st1["CapEff"], 16) == 0 and int(st1["CapPrm"], 16) == 0
    # seccomp filter mode, no new privileges
    assert st1["Seccomp"] == "2" and st1["NoNewPrivs"] == "1"
    cmdline = Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")
    assert b"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" in cmdline

    # a root of its own: not the host's, holding none of Corral's state
    root1 = Path(f"/proc/{pid1}/root")
    assert (
        os.stat(root1).st_ino != os.stat("/").st_ino or os.stat(root1).st_dev != os.stat("/").st_dev
    )
    mounts = Path(f"/proc/{pid1}/mountinfo").read_text()
    assert Path(f"/proc/{pid1}/ns/mnt").resolve() != Path("/proc/self/ns/mnt").resolve()
    state = corral.state_dir
    id1, id2 = str(one["id"]), str(two["id"])
    inside = lambda p: root1 / str(p).lstrip("/")  # noqa: E731
    assert not inside(state / "corral.db").exists()
    # of the image store, only this instance's kernel and initrd (read-only), not its disk
    seen = sorted(p.name for p in inside(state / "images").rglob("*") if p.is_file())
    on_host = sorted(p.name for p in (state / "images").rglob("*") if p.is_file())
    assert len(seen) == 2 and len(on_host) > 2, seen
    assert not inside(state / "instances" / id1 / "disk.qcow2").exists()  # only a descriptor
    assert not inside(state / "instances" / id2).exists()
    assert not inside("/etc/shadow").exists() and not inside("/root").exists()
    assert inside(state / "instances" / id1 / "console.log").exists()
    assert str(state / "instances" / id2) not in mounts
    # its disks are open descriptors, the top writable and the image below read-only
    fds = {os.readlink(f"/proc/{pid1}/fd/{n}") for n in os.listdir(f"/proc/{pid1}/fd")}
    assert str(state / "instances" / id1 / "disk.qcow2") in fds

    # the other instance's disk is out of reach of this instance's uid, even on the host
    disk2 = state / "instances" / id2 / "disk.qcow2"
    res = _as_uid(uid1, "cat", str(disk2))
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    res = _as_uid(uid1, "cat", str(state / "instances" / id1 / "disk.qcow2"))
    assert res.returncode != 0, "the disk must not be open to its QEMU's uid by path either"

    # the console still works from inside the jail (the log, and the live socket)
    log = wait_for(
        lambda: "jail1 ready" in corral.cli("logs", "jail1").out, 120, what="the console log"
    )
    assert log
    assert corral.ssh("jail1", "hostname").ok().out.strip() == "jail1"
    # corral show and corral doctor report what the node observes
    shown = corral.cli("show", "jail1").ok().out
    assert f"uid {uid1} gid {uid1}, capabilities 0" in shown
    assert "seccomp filter: on,obsolete=deny" in shown
    assert f"{id1}.jail" in shown
    doctor = corral.cli("doctor").out
    assert "each with its own uid, seccomp and jail" in doctor, doctor
    assert "qemu sandbox" in doctor and "elevateprivileges=deny" in doctor
    for name in ("jail1", "jail2"):
        corral.cli("rm", "--force", name).ok()


def test_cgroup_limits_devices_and_block_io(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "jail3", "--memory", "192M").ok()
    info = _show(corral, "jail3")
    group = f"corral/{corral.settings.namespace}/{info['id']}"
    cg = Path(f"/proc/{info['pid']}/cgroup").read_text()
    if cgroups.is_v2():
        base = Path("/sys/fs/cgroup") / group
        assert "io" in (base / "cgroup.controllers").read_text().split()
        assert (base / "io.weight").read_text().split()[-1] == "100"
    else:
        for controller in ("devices", "blkio", "pids", "memory", "cpu"):
            assert any(
                controller in line.split(":")[1].split(",") and group in line
                for line in cg.splitlines()
            ), f"QEMU is not in the {controller} group {group}:\n{cg}"
        allowed = (Path("/sys/fs/cgroup/devices") / group / "devices.list").read_text()
        assert "a *:* rwm" not in allowed
        assert "c 1:3 rwm" in allowed  # /dev/null
        weight = Path("/sys/fs/cgroup/blkio") / group / "blkio.weight"
        if weight.exists():
            assert int(weight.read_text()) > 0
    corral.cli("rm", "--force", "jail3").ok()


def test_qemu_needs_no_access_to_the_state_directory_by_path(corral: Daemon) -> None:
    """With every file root's alone (0600 in 0700 directories, as the host hardening makes
    them), QEMU still boots, hot-plugs and snapshots: disks come as descriptors, the kernel and
    initrd as private copies in its jail."""
    state = corral.state_dir
    before = {
        p: p.stat().st_mode & 0o7777 for p in [state, *state.rglob("*")] if not p.is_symlink()
    }
    try:
        for p in before:
            if p.is_dir():
                p.chmod(0o700)
            elif p.is_file():
                p.chmod(0o600)
        corral.cli("run", "tiny", "--name", "jail4", "--memory", "192M").ok()
        info = _show(corral, "jail4")
        root = Path(f"/proc/{info['pid']}/root")
        copies = [p for p in (root / str(state / "images").lstrip("/")).rglob("*") if p.is_file()]
        assert len(copies) == 2 and all(p.stat().st_mode & 0o777 == 0o400 for p in copies)
        assert corral.ssh("jail4", "hostname").ok().out.strip() == "jail4"
        corral.cli("volume", "create", "1G", "--name", "jv1").ok()
        corral.cli("volume", "attach", "jv1", "jail4").ok()
        serial = wait_for(
            lambda: corral.ssh("jail4", "cat /sys/block/vdb/serial").out.strip(),
            60,
            what="the hot-plugged disk in the guest",
        )
        assert serial.startswith("vol")
        assert "while the instance ran" in corral.cli("volume", "snapshot", "jv1").ok().out
    finally:
        corral.cli("rm", "--force", "jail4")
        corral.cli("volume", "rm", "jv1")  # detached with its instance
        for p, mode in before.items():
            if p.exists():
                p.chmod(mode)
