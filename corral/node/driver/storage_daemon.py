"""``qemu-storage-daemon`` serving an HA instance's replica images over NBD on the secondary
node (corral.node.replica_agent). It is its own process in its own session, so, like QEMU, it
outlives the agent; a restarted agent finds it again by its pid file, checked against its
command line (the replica directory is in it). The agent binds the listening socket in its
namespace and hands it over as an inherited descriptor; every disk is one writable export
under a random name, and the server takes no more connections than there are disks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from corral.errors import EnvironmentProblem
from corral.fsutil import pid_alive, proc_cmdline
from corral.proc import need

STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Export:
    node: str  # the block node's name: "root" or a volume id, as in the VM
    path: Path  # the replica image (qcow2)
    name: str  # the NBD export name


def argv(exports: list[Export], listen_fd: int, pidfile: Path) -> list[str]:
    out = ["qemu-storage-daemon"]
    for e in exports:
        out += [
            "--blockdev",
            f"driver=file,node-name=file-{e.node},filename={_opt(str(e.path))},cache.direct=off",
            "--blockdev",
            f"driver=qcow2,node-name={e.node},file=file-{e.node}",
        ]
    out += [
        "--nbd-server",
        f"addr.type=fd,addr.str={listen_fd},max-connections={max(len(exports), 1)}",
    ]
    for e in exports:
        out += [
            "--export",
            f"type=nbd,id=export-{e.node},node-name={e.node},name={e.name},writable=on",
        ]
    return [*out, "--pidfile", str(pidfile)]


def _opt(value: str) -> str:
    """A value inside QEMU's comma-separated options (a comma is written twice)."""
    return value.replace(",", ",,")


def start(exports: list[Export], listener: socket.socket, pidfile: Path, log: Path) -> int:
    """Start the daemon serving ``exports`` on ``listener`` (blocking; run in a thread).
    Returns its pid once it has written its pid file."""
    need("qemu-storage-daemon", "qemu-system-common")
    pidfile.unlink(missing_ok=True)
    fd = listener.fileno()
    os.set_inheritable(fd, True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv(exports, fd, pidfile),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            pass_fds=(fd,),
            start_new_session=True,  # outlives the agent, as QEMU does
        )
    for _ in range(200):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise EnvironmentProblem(
                f"qemu-storage-daemon exited at once ({proc.returncode}): {tail.strip()}"
            )
        if pidfile.exists() and pidfile.read_text().strip():
            return proc.pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
    proc.kill()
    proc.wait(5)
    raise EnvironmentProblem("qemu-storage-daemon did not start within 10 s")


def find(pidfile: Path, marker: str) -> int | None:
    """The pid of a running daemon of ours (its pid file, its command line naming
    ``marker``), or None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    cmdline = " ".join(proc_cmdline(pid))  # the directory is inside an option's value
    if "qemu-storage-daemon" in cmdline and marker in cmdline:
        return pid
    return None


async def stop(pidfile: Path, marker: str) -> None:
    """SIGTERM (the daemon flushes its images and exits), then SIGKILL; idempotent."""
    pid = find(pidfile, marker)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_TIMEOUT
    while pid_alive(pid) and loop.time() < deadline:
        _reap(pid)
        await asyncio.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            _reap(pid)
            await asyncio.sleep(0.05)
    pidfile.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Reap the daemon when it is our child (started by this agent); harmless otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
