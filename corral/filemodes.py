"""Who may read Corral's files on the host: the state directory is 0700 and everything in it is
created 0600/0700 (the daemon runs with umask 077), installs made before that are tightened at
start, and `corral doctor` reports anything still open to other local users.

Files whose owner or group is not root are left as they are: confinement gives some files
(an instance's, read by its unprivileged QEMU) an owner or group of its own on purpose. The
image store's parts and manifests stay 0444: they are immutable, shared by every instance
(a confined QEMU reads its kernel and initrd through a read-only bind), and the 0700 state
directory keeps other local users from reaching them."""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from corral.errors import EnvironmentProblem

T = TypeVar("T")
# immutable, shared content (relative to the state directory): see the module's note
SHARED_READ_ONLY = ("images/blobs", "images/manifests")
DAEMON_UMASK = 0o077
CLONE_FS = 0x200


def secure_state_dir(path: Path) -> int:
    """Create ``path`` 0700 (or make it so) and take group and other access away from every
    root-owned file beneath it; returns how many entries were changed."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise EnvironmentProblem(
            f"state directory {path} is not writable ({err.strerror}); "
            "choose another with --state-dir or fix its permissions"
        ) from err
    changed = 0
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)
        changed += 1
    for entry in _walk(path):
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_uid != 0 or st.st_gid != 0:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            os.chmod(entry, mode & ~0o077)
            changed += 1
    return changed


def audit(path: Path) -> list[str]:
    """What in the state directory another local user could reach: its own mode, and every
    entry that others may read, write or enter (root-owned ones: group access too)."""
    if not path.exists():
        return []
    found = []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != 0o700:
        found.append(f"{path} is {mode:04o}, not 0700")
    for entry in _walk(path):
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        m = stat.S_IMODE(st.st_mode)
        open_bits = m & (0o077 if st.st_uid == 0 and st.st_gid == 0 else 0o007)
        if open_bits:
            found.append(f"{entry} is {m:04o}")
    return found


def _walk(root: Path) -> list[Path]:
    """Every entry under ``root`` but the shared read-only parts of the image store (their
    directories are walked, not their files)."""
    shared = {root / rel for rel in SHARED_READ_ONLY}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        out += [base / d for d in dirnames]
        if base not in shared:
            out += [base / f for f in filenames]
    return out


def _unshare_fs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")


async def to_thread_with_umask(umask: int, fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a thread of its own whose umask is ``umask``, the rest of the
    process keeping its own (an image build makes files for the guest, 0644 and 0755, while
    the daemon keeps 077). The thread unshares its file-system attributes, so it is never
    reused: a pool thread would carry the umask to other work."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            _unshare_fs()
            os.umask(umask)
            result = fn(*args)
        except BaseException as err:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, err)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="corral-build", daemon=True).start()
    return await asyncio.shield(done)
