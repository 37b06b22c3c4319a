"""QEMU's jail, in the manner of Firecracker's jailer: ``python -m corral.node.driver.jail PLAN``
runs as root in the instance's cgroup and network namespace, makes a private mount namespace
whose root is an empty tmpfs holding only what this QEMU may touch (``/usr`` read-only for its
libraries, firmware and modules; a few device nodes; its kernel and initrd; its console log and
its run directory of sockets), opens its disks and its tap as root and leaves them open for QEMU
(``-add-fd`` and ``/dev/fdset/N``, ``-netdev tap,fd=N``), then chroots there, drops to the
instance's own uid and gid with no other groups, and execs QEMU. QEMU keeps the launcher's pid,
so the pid file and the agent's pidfd exit watch see QEMU itself.

Disks go by file descriptor, never by path: the state directory may be closed to every uid but
root, and a volume plugged in later reaches the running QEMU the same way (QMP ``add-fd``)."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import stat
import struct
import sys
from pathlib import Path

from pydantic import BaseModel, Field

UID_BASE = 0x5C000000  # far above login users, subordinate-id ranges and systemd's dynamic users
UID_SPAN = 1 << 24
FIRST_FD = 3
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
DEVICES = ("null", "zero", "random", "urandom")

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


class FdSpec(BaseModel):
    """A file QEMU gets already open, as descriptor ``fd``."""

    path: str
    fd: int
    write: bool = False


class Plan(BaseModel):
    """What the launcher does for one instance (written by the agent, root-only)."""

    root: str  # the jail's mount point on the host (an empty directory)
    uid: int
    gid: int
    groups: list[int] = Field(default_factory=list)  # e.g. the kvm group for /dev/kvm
    devices: list[str] = Field(default_factory=lambda: list(DEVICES))
    binds: list[str] = Field(default_factory=list)  # files or dirs QEMU sees at the same path
    readonly: list[str] = Field(default_factory=list)  # files QEMU reads at the same path
    fds: list[FdSpec] = Field(default_factory=list)
    tap: str | None = None  # opened as ``tap_fd``
    tap_fd: int = 0
    argv: list[str]


def uid_for(instances_dir: Path, iid: str) -> int:
    """The instance's own uid (also its gid), the same at every start: kept in the instance's
    directory once chosen, derived from its id and unique among this node's instances."""
    mine = instances_dir / iid / "uid"
    try:
        return int(mine.read_text())
    except (FileNotFoundError, ValueError):
        pass
    taken = set()
    for f in instances_dir.glob("*/uid"):
        try:
            taken.add(int(f.read_text()))
        except (OSError, ValueError):
            continue
    n = int.from_bytes(hashlib.sha256(iid.encode()).digest()[:8], "big") % UID_SPAN
    while UID_BASE + n in taken:
        n = (n + 1) % UID_SPAN
    uid = UID_BASE + n
    tmp = mine.with_name(".uid.tmp")
    tmp.write_text(str(uid))
    os.replace(tmp, mine)
    return uid


# -- the launcher (runs as root between the agent's fork and QEMU's exec) ------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            dst.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {src} on {dst}",
    )


def _bind(src: str, dst: str, readonly: bool) -> None:
    _mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (MS_RDONLY if readonly else 0)
    _mount(None, dst, None, flags)


def _place(root: str, path: str, like: str) -> str:
    """An empty file or directory at ``path`` inside the jail (to bind ``like`` onto)."""
    inside = root + path
    if os.path.isdir(like):
        os.makedirs(inside, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
        with open(inside, "a"):
            pass
    return inside


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def _readable_by_others(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def enter(plan: Plan) -> None:
    """Build the jail, enter it and become the instance's user (never returns on success)."""
    root = plan.root
    # the daemon runs with umask 077; the jail's own directories (the way down to /usr, the
    # devices, the sockets) must be traversable by the instance's uid
    os.umask(0o022)
    opened: list[tuple[int, int]] = []  # (where it is now, where QEMU expects it)
    for spec in plan.fds:
        flags = (os.O_RDWR if spec.write else os.O_RDONLY) | os.O_CLOEXEC
        opened.append((os.open(spec.path, flags), spec.fd))
    if plan.tap:
        opened.append((_open_tap(plan.tap), plan.tap_fd))
    # out of the way of the numbers QEMU expects, then into place (inheritable)
    high = [(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000), want) for fd, want in opened]
    for fd, _ in opened:
        os.close(fd)
    for fd, want in high:
        os.dup2(fd, want, inheritable=True)
        os.close(fd)

    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(root, mode=0o700, exist_ok=True)
    copies = [p for p in plan.readonly if not _readable_by_others(p)]
    size = (16 << 20) + sum(os.stat(p).st_size for p in copies)  # room for the copies
    _mount("corral-jail", root, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={size}")
    for top in sorted(os.listdir("/")):
        host = "/" + top
        if top == "usr":
            _bind(host, _place(root, host, host), readonly=True)
        elif os.path.islink(host) and os.readlink(host).startswith("usr/"):
            os.symlink(os.readlink(host), root + host)  # merged /usr: bin, lib, lib64, sbin
    for dev in plan.devices:
        host = f"/dev/{dev}"
        if os.path.exists(host):
            _bind(host, _place(root, host, host), readonly=False)
    for path in plan.binds:
        if not os.path.exists(path):  # e.g. a console log just rotated away
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chown(path, plan.uid, plan.gid)
        _bind(path, _place(root, path, path), readonly=False)
    for path in plan.readonly:
        if path not in copies:
            _bind(path, _place(root, path, path), readonly=True)
        else:  # closed to other uids: QEMU gets its own copy
            inside = _place(root, path, path)
            shutil.copyfile(path, inside)
            os.chown(inside, plan.uid, plan.gid)
            os.chmod(inside, 0o400)
    _mount(None, root, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY, "mode=0755")
    os.chroot(root)
    os.chdir("/")
    os.setgroups(plan.groups)
    os.setresgid(plan.gid, plan.gid, plan.gid)
    os.setresuid(plan.uid, plan.uid, plan.uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("dropping root failed")
    os.umask(0o077)  # what QEMU itself creates (its pid file, sockets) is its own
    os.execv(plan.argv[0], plan.argv)


def main() -> None:
    plan = Plan.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    try:
        enter(plan)
    except OSError as err:
        print(f"corral jail: {err}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
