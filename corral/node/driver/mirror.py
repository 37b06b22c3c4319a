"""A running VM's disks copied to another node while the guest writes to them: the other node's
QEMU serves its disks over NBD (``nbd-server-start`` + ``block-export-add``), this node's QEMU
opens each as a block node (``blockdev-add`` driver ``nbd``) and runs a ``blockdev-mirror`` job
into it. Two uses:

- live migration (QEMU's iotest 194): the mirror is READY when the copy has caught up; memory
  then moves, and the jobs are cancelled (``block-job-cancel`` of a READY mirror ends it without
  pivoting, the copy complete) once the destination has the VM;
- high availability: the same mirror with ``copy-mode=write-blocking`` is never completed, so
  every write the guest sees acknowledged is on both nodes; ``stop`` ends it, and a new
  ``start`` (``sync=full``, or later an incremental one from a dirty bitmap) resyncs.

QEMU runs in a jail with no sockets of its own on the node's addresses: the agent opens every
socket (the listener on the serving side, one connected socket per disk on the mirroring side)
and hands it over (``getfd``). An export's name is a random token given only to the mirroring
node, and the server takes no more connections than there are disks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Literal

from corral.errors import CorralError
from corral.node.driver.qmp import Qmp, QmpUnavailable
from corral.node.spec import MIRROR_INCOMPLETE
from corral.node.spec import MirrorDisk as Disk
from corral.node.spec import MirrorProgress as JobProgress

log = logging.getLogger(__name__)

CopyMode = Literal["background", "write-blocking"]
LISTEN_FD = "nbd-listen"
CANCEL_TIMEOUT = 30.0


class MirrorFailed(CorralError):
    reason = "mirror-failed"


def job_id(node: str) -> str:
    return f"mirror-{node}"


def target_node(node: str) -> str:
    return f"mirror-to-{node}"


# -- the serving side ----------------------------------------------------------------------
async def serve(qmp: Qmp, listener: socket.socket, exports: dict[str, str]) -> None:
    """Serve block nodes (name -> export name) writable over NBD on ``listener`` (a listening
    socket the agent bound; QEMU accepts on it). Idempotent per export."""
    await qmp.get_fd(listener.fileno(), LISTEN_FD)
    try:
        await qmp.execute(
            "nbd-server-start",
            {
                "addr": {"type": "fd", "data": {"str": LISTEN_FD}},
                "max-connections": max(len(exports), 1),
            },
        )
    except QmpUnavailable as err:
        if "already running" not in str(err):
            raise
    have = {e.get("id") for e in await qmp.execute("query-block-exports")}
    for node, name in exports.items():
        if f"export-{node}" in have:
            continue
        await qmp.execute(
            "block-export-add",
            {
                "type": "nbd",
                "id": f"export-{node}",
                "node-name": node,
                "name": name,
                "writable": True,
            },
        )


async def unserve(qmp: Qmp) -> None:
    """Stop serving (every export and the server); harmless when nothing is served."""
    with contextlib.suppress(QmpUnavailable):
        for e in await qmp.execute("query-block-exports"):
            with contextlib.suppress(QmpUnavailable):
                await qmp.execute("block-export-del", {"id": e["id"], "mode": "hard"})
    with contextlib.suppress(QmpUnavailable):
        await qmp.execute("nbd-server-stop")


# -- the mirroring side --------------------------------------------------------------------
def connect(
    address: str, port: int, timeout: float = 10.0, user_timeout: float = 0.0
) -> socket.socket:
    """A TCP connection to the serving node (blocking; run in a thread). ``user_timeout``
    (seconds; 0: the kernel's default, minutes): a peer that stops acknowledging for that long
    fails the connection, so a write-blocking mirror over a dead link errors out (the guest
    goes on, degraded) instead of holding the guest's writes for as long as TCP retries."""
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if user_timeout > 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(int(user_timeout / 3), 1))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock


async def start(
    qmp: Qmp,
    disk: Disk,
    address: str,
    port: int,
    copy_mode: CopyMode = "write-blocking",
    user_timeout: float = 0.0,
) -> None:
    """Open the export of ``disk`` as a block node and start mirroring into it (idempotent:
    a job already there is left alone)."""
    if any(j.node == disk.node and j.status for j in await jobs(qmp)):
        return
    nodes = {r["node-name"] for r in await qmp.execute("query-named-block-nodes", {"flat": True})}
    if disk.node not in nodes:
        raise MirrorFailed(f"the VM has no disk {disk.node!r} to mirror")
    target = target_node(disk.node)
    if target not in nodes:
        sock = await asyncio.to_thread(connect, address, port, 10.0, user_timeout)
        try:
            fdname = f"nbd-{disk.node}"
            await qmp.get_fd(sock.fileno(), fdname)
        finally:
            sock.close()  # QEMU holds its own copy now
        await qmp.execute(
            "blockdev-add",
            {
                "driver": "nbd",
                "node-name": target,
                "server": {"type": "fd", "str": fdname},
                "export": disk.export,
            },
            timeout=30,
        )
    await qmp.execute(
        "blockdev-mirror",
        {
            "job-id": job_id(disk.node),
            "device": disk.node,
            "target": target,
            "sync": disk.sync,
            "copy-mode": copy_mode,
            "auto-dismiss": True,
        },
    )


async def jobs(qmp: Qmp) -> list[JobProgress]:
    """The mirror jobs of this VM and how far each got."""
    out = []
    for j in await qmp.execute("query-block-jobs"):
        jid = str(j.get("device", ""))
        if not jid.startswith("mirror-"):
            continue
        out.append(
            JobProgress(
                node=jid.removeprefix("mirror-"),
                total=int(j.get("len", 0)),
                done=int(j.get("offset", 0)),
                ready=bool(j.get("ready")),
                status=str(j.get("status", "")),
                error=str(j.get("error", "") or ""),
            )
        )
    return out


async def stop(qmp: Qmp, nodes: list[str], force: bool = False) -> None:
    """End the mirrors of ``nodes`` and close their NBD connections. Forced, they are abandoned
    at once (a cancelled migration). Not forced, a READY mirror first copies what is still
    dirty and ends complete, without pivoting (the VM goes on with its own disk); then every
    one of ``nodes`` must end so (QEMU's ``BLOCK_JOB_COMPLETED`` without an error), or
    ``MirrorFailed`` (reason ``mirror-incomplete``) says which did not: one whose job had
    already ended by itself (its target failed), ended with an error, was cancelled before it
    was ready, or did not end in time. The targets are closed either way."""
    if force:
        for node in nodes:
            with contextlib.suppress(QmpUnavailable):
                await qmp.execute("block-job-cancel", {"device": job_id(node), "force": True})
        left = await _wait_gone(qmp, nodes)
        if left:
            log.warning("mirror jobs of %s did not end in %.0f s", sorted(left), CANCEL_TIMEOUT)
        await _close_targets(qmp, nodes)
        return
    problems: dict[str, str] = {}
    try:
        # listening before the jobs are read: one that ends by itself meanwhile is heard
        with qmp.listener(["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"]) as events:
            present = {j.node for j in await jobs(qmp)}
            for n in nodes:
                if n not in present:
                    problems[n] = "it had ended before (its target failed)"
            waiting: dict[str, str] = {job_id(n): n for n in nodes if n in present}
            for jid in waiting:
                with contextlib.suppress(QmpUnavailable):
                    await qmp.execute("block-job-cancel", {"device": jid, "force": False})
            try:
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    while waiting:
                        event: dict[str, Any] = dict(await events.get())
                        data: dict[str, Any] = event.get("data") or {}
                        node = waiting.pop(str(data.get("device", "")), "")
                        if not node:
                            continue
                        if event.get("event") == "BLOCK_JOB_CANCELLED":
                            problems[node] = "it was cancelled before it was in step"
                        elif data.get("error"):
                            problems[node] = f"its last writes failed: {data['error']}"
            except TimeoutError:
                for node in waiting.values():
                    problems[node] = f"it did not end within {CANCEL_TIMEOUT:.0f} s"
    finally:
        await _close_targets(qmp, nodes)
    if problems:
        raise MirrorFailed(
            "the disk mirror did not end complete: "
            + "; ".join(f"{n}: {why}" for n, why in sorted(problems.items())),
            reason=MIRROR_INCOMPLETE,
        )


async def _wait_gone(qmp: Qmp, nodes: list[str]) -> set[str]:
    """Wait (briefly: at a switch-over the guest is paused meanwhile) for the jobs of ``nodes``
    to be gone; returns those still there after ``CANCEL_TIMEOUT``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_TIMEOUT
    while True:
        left = {j.node for j in await jobs(qmp)} & set(nodes)
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.01)


async def _close_targets(qmp: Qmp, nodes: list[str]) -> None:
    with contextlib.suppress(QmpUnavailable):
        have = {
            r["node-name"] for r in await qmp.execute("query-named-block-nodes", {"flat": True})
        }
        for node in nodes:
            if target_node(node) in have:
                with contextlib.suppress(QmpUnavailable):
                    await qmp.execute("blockdev-del", {"node-name": target_node(node)})


def summary(progress: list[JobProgress]) -> dict[str, Any]:
    total = sum(p.total for p in progress)
    done = sum(p.done for p in progress)
    return {
        "total": total,
        "done": done,
        "ready": bool(progress) and all(p.ready for p in progress),
        "percent": round(100.0 * done / total, 1) if total else 100.0,
    }
