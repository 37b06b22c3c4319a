"""Network namespaces: create and remove them, open sockets inside them, run programs in them.

Sockets are made inside a namespace by a short-lived thread that ``setns``-es itself there
(a socket stays in the namespace it was made in), so the daemon serves and connects inside
Corral's namespace without a helper process.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from corral.errors import EnvironmentProblem
from corral.proc import arun

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


async def ensure(name: str) -> None:
    """Create the namespace (idempotent) with its loopback up."""
    if not exists(name):
        await arun(["ip", "netns", "add", name])
    await arun(["ip", "-n", name, "link", "set", "lo", "up"])


async def delete(name: str) -> None:
    if exists(name):
        await arun(["ip", "netns", "delete", name], check=False)


def setns_fd(fd: int) -> None:
    if _setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def preexec(name: str) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into namespace ``name`` before it execs.

    The namespace file is opened here, in the parent; the child only calls setns(2)."""
    try:
        fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise EnvironmentProblem(f"network namespace {name} does not exist") from err

    def enter() -> None:
        setns_fd(fd)

    enter.fd = fd  # type: ignore[attr-defined]  # the caller closes it after the fork
    return enter


def socket_in(
    name: str, family: int = socket.AF_INET, type_: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that lives in namespace ``name``."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns_fd(fd)
            finally:
                os.close(fd)
            result.append(socket.socket(family, type_))
        except BaseException as err:  # handed to the caller's thread
            result.append(err)

    t = threading.Thread(target=work, name=f"netns-{name}")
    t.start()
    t.join(10)
    if not result:
        raise EnvironmentProblem(f"could not open a socket in network namespace {name}")
    if isinstance(result[0], BaseException):
        raise EnvironmentProblem(
            f"could not open a socket in network namespace {name}: {result[0]}"
        ) from result[0]
    return result[0]


def listen_in(name: str, host: str, port: int, backlog: int = 128) -> socket.socket:
    sock = socket_in(name)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
