"""Cold moves of stopped instances (``corral node evacuate``), the node's half. Mixed into
``NodeAgent``; the controller (``corral.controller.evacuations``) drives the calls in this order
and may repeat any of them:

destination ``evacuate_receive``: empty disks for the instance (the root overlay on the same
base image, of the same virtual size; volumes empty, of the same size) served writable over NBD
by a ``qemu-storage-daemon`` on the node's migration address, as ``replica_serve`` does for an HA
replica. Every call starts anew (a daemon and copy already there are removed first).

source ``evacuate_send``: each disk copied into its export with ``qemu-img convert -n``: the root
overlay with ``-B`` (its own clusters only, zeroed ones included, the base image being on both
nodes), a volume whole; then ``qemu-img compare`` reads both sides through, so a copy that does
not match what the guest would see is an error before anything moves. Refused while the instance
runs here: only a stopped guest's disks hold still. No QEMU of the instance is needed: the
images are closed.

destination ``evacuate_accept``: the daemon stops and the copies become the instance's own
disks and files here (spec, tap), ready for ``instance_start``. ``evacuate_abort`` removes all
of it again (refused for an instance running here). The source's copy is removed afterwards by
``migrate_cleanup``, which refuses a running instance."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from corral.errors import EnvironmentProblem, NotFound, WrongState
from corral.node.driver import storage_daemon
from corral.node.driver.machine import find_pid
from corral.node.replica_agent import ReplicaAgent
from corral.node.spec import InstanceSpec, MirrorDisk, ReplicaServed
from corral.node.storage import volumes as volume_files
from corral.proc import CommandFailed, arun, need

log = logging.getLogger(__name__)

COPY_TIMEOUT = 3600.0  # seconds one disk's copy (or its comparison) may take


class EvacuateAgent(ReplicaAgent):
    def _arriving_dir(self, iid: str) -> Path:
        return self.settings.state_dir / "arriving" / iid

    def _runs_here(self, iid: str) -> bool:
        m = self.machines.get(iid)
        return (m is not None and m.running) or find_pid(self.paths(iid)) is not None

    # -- the destination --------------------------------------------------------------------
    async def evacuate_receive(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> ReplicaServed:
        """Empty disks for ``spec`` served over NBD on ``address`` (one export per disk)."""
        if self._runs_here(spec.id):
            raise WrongState(
                f"instance {spec.id} runs on this node: it cannot be moved here",
                resource="instance",
            )
        if self.paths(spec.id).dir.exists():
            # a copy taken over by an earlier try whose record never moved here: stale
            log.info("%s: removing a stale copy before receiving it again", spec.id)
            await self.instance_destroy(spec.id, None)
        async with self._lock(spec.id):
            d = self._arriving_dir(spec.id)
            served = await self._serve_empty(d, spec, sizes, address, "to receive them")
            self.event_log.append(
                "instance-arriving", {"id": spec.id, "pid": served.pid, "peer": peer}
            )
            return served

    async def evacuate_accept(self, spec: InstanceSpec) -> None:
        """The checked copies become ``spec``'s disks here, with its files and tap (repeatable:
        once taken, only the files and tap are made again)."""
        async with self._lock(spec.id):
            d = self._arriving_dir(spec.id)
            paths = self.paths(spec.id)
            root = self._volume(spec.root_volume) if spec.root_volume else paths.disk
            if not d.exists() and not root.exists():
                raise NotFound(
                    f"no copy of {spec.id} arrived on this node; move it again",
                    resource="instance",
                )
            await self._take_disks(d, spec)
        await self.instance_create(spec)  # spec file and tap (the overlay is there)
        self.event_log.append("instance-arrived", {"id": spec.id})

    async def evacuate_abort(
        self, iid: str, tap: str | None = None, volumes: list[str] | None = None
    ) -> None:
        """Remove what a cold move of ``iid`` made here (the daemon, the copies, and the files
        an accept made); idempotent. Refused while the instance runs here."""
        if self._runs_here(iid):
            raise WrongState(
                f"instance {iid} runs on this node: refusing to remove a copy that runs",
                resource="instance",
            )
        d = self._arriving_dir(iid)
        async with self._lock(iid):
            await storage_daemon.stop(d / "qsd.pid", str(d))
            shutil.rmtree(d, ignore_errors=True)
        if self.paths(iid).dir.exists() or tap:
            await self.instance_destroy(iid, tap)
        for vid in volumes or []:
            volume_files.remove(self._volume(vid))
        self.event_log.append("instance-arrival-undone", {"id": iid})

    async def arrivals_stop_all(self) -> None:
        """Stop every daemon serving a cold move's copies here (the node's teardown)."""
        for d in sorted((self.settings.state_dir / "arriving").glob("*")):
            await storage_daemon.stop(d / "qsd.pid", str(d))

    # -- the source -------------------------------------------------------------------------
    async def evacuate_send(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> list[str]:
        """Copy the stopped instance's disks into the destination's exports and compare each
        copy with its original; returns the disks checked equal."""
        need("qemu-img", "qemu-utils")
        if self._runs_here(iid):
            raise WrongState(
                f"instance {iid} runs on this node: only a stopped instance moves cold; stop it "
                "first",
                resource="instance",
            )
        host = f"[{address}]" if ":" in address else address
        done = []
        async with self._lock(iid):
            for disk in disks:
                src = self.paths(iid).disk if disk.node == "root" else self._volume(disk.node)
                if not src.exists():
                    raise NotFound(
                        f"disk {disk.node} of {iid} is not on this node", resource="instance"
                    )
                url = f"nbd://{host}:{port}/{disk.export}"
                argv = ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw"]
                if disk.sync == "top":
                    backing, fmt = await _backing(src)
                    if backing:  # only the overlay's own clusters: the base is there
                        argv += ["-B", backing, "-F", fmt]
                else:
                    argv += ["--target-is-zero"]  # the destination's volume is new and empty
                try:
                    await arun([*argv, str(src), url], timeout=COPY_TIMEOUT)
                    await arun(
                        ["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", str(src), url],
                        timeout=COPY_TIMEOUT,
                    )
                except CommandFailed as err:
                    what = "differs from" if "compare" in err.argv else "could not be copied to"
                    raise EnvironmentProblem(
                        f"disk {disk.node} of {iid} {what} the destination ({address}): "
                        f"{err.stderr.strip()[-300:] or f'exit {err.returncode}'}"
                    ) from err
                done.append(disk.node)
        self.event_log.append("instance-sent", {"id": iid, "to": address, "disks": done})
        return done


async def _backing(image: Path) -> tuple[str, str]:
    """The backing file and its format of a qcow2 image ("" when it has none)."""
    info = json.loads(await arun(["qemu-img", "info", "-U", "--output=json", str(image)]))
    backing = str(info.get("full-backing-filename") or info.get("backing-filename") or "")
    return backing, str(info.get("backing-filename-format") or "qcow2")
