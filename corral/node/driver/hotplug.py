"""Block devices of a running VM over QMP: plug a qcow2 volume in (``blockdev-add``, then a
virtio-blk-pci device whose serial is the volume id), take it out (``device_del``, wait until the
guest lets go: ``DEVICE_DELETED``, then ``blockdev-del``), and copy a disk while the guest writes
to it (a ``blockdev-backup`` job with ``sync=full``: the copy is the disk as it was when the job
started, whatever the guest writes meanwhile).

Corral's machine type (``-machine pc``) hot-plugs PCI devices through ACPI: the guest's kernel
(acpiphp) sees the slot change and probes the device. Every step here is idempotent, so a caller
may repeat it after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from corral.errors import CorralError, WrongState
from corral.node.driver.qmp import Qmp, QmpUnavailable
from corral.node.spec import GUEST_HOLDS_DISK

log = logging.getLogger(__name__)

DETACH_TIMEOUT = 20.0  # seconds a guest gets to release a disk after the unplug request


class GuestHoldsDisk(WrongState):
    """The guest did not release the disk in time (it may refuse, or not listen yet)."""

    reason = GUEST_HOLDS_DISK


def device_id(vid: str) -> str:
    return f"disk-{vid}"


def serial(vid: str) -> str:
    """The disk's serial as the guest sees it: the volume id without its dash (QEMU keeps 20
    characters; ``vol`` and 17 hex digits fit), as EC2's NVMe volumes show it."""
    return vid.replace("-", "")[:20]


def blockdev(vid: str, path: Path) -> dict[str, Any]:
    """The volume's block node (qcow2 over a file), as QMP ``blockdev-add`` and ``-blockdev``
    take it."""
    return {
        "driver": "qcow2",
        "node-name": vid,
        "discard": "unmap",
        "file": {"driver": "file", "filename": str(path)},
    }


def device(vid: str) -> dict[str, Any]:
    return {"driver": "virtio-blk-pci", "drive": vid, "id": device_id(vid), "serial": serial(vid)}


async def devices(qmp: Qmp) -> set[str]:
    """Ids of the devices plugged in by id (``-device …,id=`` or ``device_add``)."""
    rows = await qmp.execute("qom-list", {"path": "/machine/peripheral"})
    return {r["name"] for r in rows if str(r.get("type", "")).startswith("child<")}


async def nodes(qmp: Qmp) -> set[str]:
    rows = await qmp.execute("query-named-block-nodes", {"flat": True})
    return {r["node-name"] for r in rows}


async def volumes(qmp: Qmp) -> list[str]:
    """Volume ids plugged into the VM."""
    return sorted(d.removeprefix("disk-") for d in await devices(qmp) if d.startswith("disk-vol-"))


async def attach(qmp: Qmp, vid: str, path: Path) -> bool:
    """Plug the volume in; False when it already was. A failed ``device_add`` removes the
    block node again, so nothing is left half-plugged."""
    if device_id(vid) in await devices(qmp):
        return False
    if vid not in await nodes(qmp):
        # QEMU lives in a jail without the volume's path: it gets the file open
        await qmp.remove_fds(vid)
        fdset = await qmp.add_fd(path, True, vid)
        try:
            await qmp.execute("blockdev-add", blockdev(vid, Path(fdset)))
        except QmpUnavailable:
            await qmp.remove_fds(vid)
            raise
    try:
        await qmp.execute("device_add", device(vid))
    except QmpUnavailable:
        with contextlib.suppress(QmpUnavailable):
            await qmp.execute("blockdev-del", {"node-name": vid})
            await qmp.remove_fds(vid)
        raise
    return True


async def detach(qmp: Qmp, vid: str, timeout: float = DETACH_TIMEOUT) -> bool:
    """Ask the guest to release the disk and wait until it has; then drop the block node (which
    flushes and closes the file). False when it was not plugged in. Raises ``GuestHoldsDisk``
    when the guest has not let go within ``timeout``: the disk then stays plugged in (QEMU keeps
    the request; a later ``detach`` waits for the same one)."""
    dev = device_id(vid)
    present = dev in await devices(qmp)
    if present:
        with qmp.listener(["DEVICE_DELETED"]) as events:
            try:
                await qmp.execute("device_del", {"id": dev})
            except QmpUnavailable as err:
                if "in the process of unplug" not in str(
                    err
                ) and "already in the process" not in str(err):
                    raise
            if not await _wait_deleted(qmp, events, dev, timeout):
                raise GuestHoldsDisk(
                    f"the guest did not release {vid} within {timeout:.0f} s (a guest that is "
                    "still booting, paused or without ACPI hot-plug support does not answer); "
                    "it stays attached. Stop what uses it in the guest and detach again, or "
                    "detach with force (the instance is restarted without it)",
                    resource="volume",
                )
    if vid in await nodes(qmp):
        await qmp.execute("blockdev-del", {"node-name": vid})
    await qmp.remove_fds(vid)
    return present


async def _wait_deleted(qmp: Qmp, events: Any, dev: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            event = await asyncio.wait_for(events.get(), min(left, 1.0))
        except TimeoutError:
            # the event may have come before we listened (a repeated detach): look
            if dev not in await devices(qmp):
                return True
            continue
        if (event.get("data") or {}).get("device") == dev:
            return True
    return dev not in await devices(qmp)


async def backup(qmp: Qmp, node: str, target: Path, job: str, timeout: float) -> None:
    """Copy block node (or device) ``node`` into the existing, empty qcow2 file ``target`` of
    the same size, as it is at this moment, while the guest goes on writing (copy-before-write
    keeps the old data for the copy). Waits for the job; raises on failure or timeout (then
    the job is cancelled)."""
    tnode = f"bk-{job}"[:31]
    if tnode in await nodes(qmp):  # left by an interrupted attempt
        await _cancel(qmp, job)
        await qmp.execute("blockdev-del", {"node-name": tnode})
    await qmp.remove_fds(tnode)
    fdset = await qmp.add_fd(target, True, tnode)  # QEMU's jail has no path to the target
    try:
        await qmp.execute(
            "blockdev-add",
            {
                "driver": "qcow2",
                "node-name": tnode,
                "discard": "unmap",
                "detect-zeroes": "unmap",
                "file": {"driver": "file", "filename": fdset},
            },
        )
    except QmpUnavailable:
        await qmp.remove_fds(tnode)
        raise
    try:
        with qmp.listener(["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"]) as events:
            await qmp.execute(
                "blockdev-backup", {"job-id": job, "device": node, "target": tnode, "sync": "full"}
            )
            try:
                result = await asyncio.wait_for(_job_end(events, job), timeout)
            except TimeoutError:
                await _cancel(qmp, job)
                raise CorralError(
                    f"copying {node} took longer than {timeout:.0f} s; cancelled"
                ) from None
        if result.get("error") or result.get("event") == "BLOCK_JOB_CANCELLED":
            raise CorralError(f"copying {node} failed: {result.get('error') or 'cancelled'}")
    finally:
        with contextlib.suppress(QmpUnavailable):
            await qmp.execute("blockdev-del", {"node-name": tnode})
            await qmp.remove_fds(tnode)


async def _job_end(events: Any, job: str) -> dict[str, Any]:
    while True:
        event = await events.get()
        data = event.get("data") or {}
        if data.get("device") == job:
            return {"event": event.get("event"), **data}


async def _cancel(qmp: Qmp, job: str) -> None:
    with contextlib.suppress(QmpUnavailable):
        await qmp.execute("block-job-cancel", {"device": job, "force": True})
    for _ in range(50):
        jobs = await qmp.execute("query-block-jobs")
        if not any(j.get("device") == job for j in jobs):
            return
        await asyncio.sleep(0.1)


async def throttle(qmp: Qmp, vid: str, iops: int, iops_burst: int, bps: int) -> None:
    """Limit the volume's disk (QEMU block throttling, seen by the guest as a slower disk):
    ``iops`` operations and ``bps`` bytes a second in total, bursting to ``iops_burst``
    operations a second for up to a minute; zeros lift the limits."""
    await throttle_device(qmp, device_id(vid), iops, bps, iops_burst, 0, 60)


async def throttle_device(
    qmp: Qmp,
    dev: str,
    iops: int,
    bps: int,
    iops_burst: int = 0,
    bps_burst: int = 0,
    burst_seconds: int = 60,
) -> None:
    """Limit the disk whose virtio-blk device has id ``dev`` (a volume's, or ``root-disk``):
    ``iops`` operations and ``bps`` bytes a second in total, bursting to ``iops_burst`` and
    ``bps_burst`` for up to ``burst_seconds``; zeros lift the limits."""
    await qmp.execute(
        "block_set_io_throttle",
        throttle_args(dev, await _qdev(qmp, dev), iops, bps, iops_burst, bps_burst, burst_seconds),
    )


async def _qdev(qmp: Qmp, dev: str) -> str:
    # the block backend is the virtio-blk device inside the PCI proxy that carries the id:
    # its QOM path as query-block names it
    rows = await qmp.execute("query-block")
    return next(
        (
            str(r["qdev"])
            for r in rows
            if str(r.get("qdev", "")).split("/")[-2:-1] == [dev] or r.get("qdev") == dev
        ),
        f"/machine/peripheral/{dev}/virtio-backend",
    )


def throttle_args(
    dev: str,
    qdev: str,
    iops: int,
    bps: int,
    iops_burst: int = 0,
    bps_burst: int = 0,
    burst_seconds: int = 60,
) -> dict[str, Any]:
    """``block_set_io_throttle``'s arguments (bursts only above the sustained rate)."""
    args: dict[str, Any] = {
        "id": qdev,
        "iops": iops,
        "iops_rd": 0,
        "iops_wr": 0,
        "bps": bps,
        "bps_rd": 0,
        "bps_wr": 0,
    }
    seconds = max(1, burst_seconds)
    if iops and iops_burst > iops:
        args |= {"iops_max": iops_burst, "iops_max_length": seconds}
    if bps and bps_burst > bps:
        args |= {"bps_max": bps_burst, "bps_max_length": seconds}
    return args
