"""High availability, the node's half: an HA instance's disks replicated synchronously to a
secondary node. Mixed into ``NodeAgent``; the controller (``corral.controller.replicas``)
drives the calls and may repeat any of them:

secondary ``replica_serve``: a replica image per disk (the root overlay on the same base image,
``sync=top``; volumes empty of the same size, ``sync=full``), served writable over NBD by a
``qemu-storage-daemon`` (``driver.storage_daemon``: its own process, outliving the agent, found
again by its pid file) on a socket the agent bound on its address.

primary ``replica_mirror``: every disk mirrored into those exports with ``blockdev-mirror
copy-mode=write-blocking`` (``driver.mirror``), never completed: once a job is READY a write
reaches the guest only when it is on both nodes. The NBD connections carry a TCP user timeout,
so a dead secondary or link fails the mirror within seconds; the guest runs on, ``degraded``
(``replica_status``), until the controller resyncs (a new ``replica_serve`` + ``replica_mirror``:
a full copy, as QEMU 7.2's ``blockdev-mirror`` cannot start from a dirty bitmap).

secondary ``replica_promote`` (the primary's node is dead): the daemon stops, the replica images
move to where the instance's own disks live on this node, and the instance starts from them
through the one launch path (``instance_start``). ``replica_drop`` removes a replica."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

from corral.errors import NotFound, WrongState
from corral.fsutil import atomic_write
from corral.node.driver import mirror, storage_daemon
from corral.node.driver.machine import find_pid
from corral.node.migrate_agent import MigrateAgent, _listen
from corral.node.spec import (
    REPLICA_DEGRADED,
    REPLICA_IN_SYNC,
    REPLICA_SYNCING,
    InstanceSpec,
    MirrorDisk,
    ReplicaServed,
    ReplicaStatus,
)
from corral.node.storage import overlays
from corral.node.storage import volumes as volume_files

log = logging.getLogger(__name__)

LINK_TIMEOUT = 5.0  # seconds an unacknowledged NBD write may wait before the mirror fails


class ReplicaAgent(MigrateAgent):
    async def instance_start(self, spec: InstanceSpec) -> int:
        raise NotImplementedError

    async def instance_destroy(self, iid: str, tap: str | None = None) -> None:
        raise NotImplementedError

    def _replica_dir(self, iid: str) -> Path:
        return self.settings.state_dir / "replicas" / iid

    def _mirror_record(self, iid: str) -> Path:
        return self.paths(iid).dir / "replica.json"

    # -- the secondary ----------------------------------------------------------------------
    async def replica_serve(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> ReplicaServed:
        """Replica images of ``spec``'s disks, served over NBD on ``address``. Every call
        starts anew: a daemon already there is stopped and the images made again, empty (the
        primary's next mirror copies everything). That is what a resync needs: the old
        daemon may still hold the connections of a mirror that died with the link (its side
        never saw them close), and it takes no more connections than there are disks. The
        controller calls ``replica_mirror`` only with the answer of the last call."""
        m = self.machines.get(spec.id)
        if (m is not None and m.running) or find_pid(self.paths(spec.id)) is not None:
            raise WrongState(
                f"instance {spec.id} itself runs on this node: its replica must be on another one",
                resource="instance",
            )
        if self.paths(spec.id).dir.exists():
            # a stale copy: this node ran it before it failed over elsewhere (the controller
            # asks for a replica here only when the record says the instance is elsewhere)
            log.info("%s: removing the stale copy left from before a failover", spec.id)
            await self.instance_destroy(spec.id, None)
        async with self._lock(spec.id):
            d = self._replica_dir(spec.id)
            served = await self._serve_empty(
                d, spec, sizes, address, "for their replicas", keep_spec=True
            )
            self.event_log.append(
                "replica-served", {"id": spec.id, "pid": served.pid, "peer": peer}
            )
            return served

    async def _take_disks(self, d: Path, spec: InstanceSpec) -> None:
        """The images served from ``d`` become ``spec``'s own disks here (its daemon stopped
        first); what is already in place stays (a repeated call)."""
        await storage_daemon.stop(d / "qsd.pid", str(d))
        self.paths(spec.id).dir.mkdir(parents=True, exist_ok=True)
        moves = []
        if (d / "root.qcow2").exists():
            moves.append((d / "root.qcow2", self.paths(spec.id).disk))
        for vid in ([spec.root_volume] if spec.root_volume else []) + [v.id for v in spec.volumes]:
            if (d / f"{vid}.qcow2").exists():
                moves.append((d / f"{vid}.qcow2", self._volume(vid)))
        for src, dst in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        shutil.rmtree(d, ignore_errors=True)

    async def _serve_empty(
        self,
        d: Path,
        spec: InstanceSpec,
        sizes: dict[str, int],
        address: str,
        purpose: str,
        keep_spec: bool = False,
    ) -> ReplicaServed:
        """``spec``'s disks made again, empty, in ``d`` (the root overlay on its image, each
        volume of its size; a daemon already serving there stopped first), served over NBD on
        ``address`` by a ``qemu-storage-daemon`` of their own; the answer kept in
        ``d/served.json`` (and the spec in ``d/spec.json`` with ``keep_spec``). For a replica
        and for a cold move's copy alike; ``purpose`` ends the error for a missing size."""
        manifest = self.images.get_manifest(spec.image)  # NotFound: pull it first
        vols = ([spec.root_volume] if spec.root_volume else []) + [v.id for v in spec.volumes]
        missing = [v for v in vols if v not in sizes]
        if missing:
            raise WrongState(
                f"the sizes of volumes {', '.join(missing)} are needed {purpose}",
                resource="volume",
            )
        await storage_daemon.stop(d / "qsd.pid", str(d))
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        exports: list[storage_daemon.Export] = []
        if spec.root_volume is None:
            root = d / "root.qcow2"
            await overlays.create(
                root,
                self.images.root_disk_path(manifest),
                manifest.root_disk.format,
                spec.disk_size,
            )
            exports.append(storage_daemon.Export("root", root, secrets.token_hex(16)))
        for vid in vols:
            await volume_files.create(d / f"{vid}.qcow2", sizes[vid])
            exports.append(storage_daemon.Export(vid, d / f"{vid}.qcow2", secrets.token_hex(16)))
        if keep_spec:
            atomic_write(d / "spec.json", spec.model_dump_json(indent=2))
        listener = _listen(address)
        try:
            pid = await asyncio.to_thread(
                storage_daemon.start, exports, listener, d / "qsd.pid", d / "qsd.log"
            )
            port = listener.getsockname()[1]
        finally:
            listener.close()  # the daemon has its own copy
        served = ReplicaServed(
            address=address, port=port, exports={e.node: e.name for e in exports}, pid=pid
        )
        atomic_write(d / "served.json", served.model_dump_json())
        return served

    async def replica_drop(self, iid: str, volumes: list[str] | None = None) -> None:
        """Remove the replica of ``iid`` kept here (its daemon and images); idempotent."""
        async with self._lock(iid):
            d = self._replica_dir(iid)
            await storage_daemon.stop(d / "qsd.pid", str(d))
            shutil.rmtree(d, ignore_errors=True)
        self.event_log.append("replica-dropped", {"id": iid})

    async def replicas_stop_all(self) -> None:
        """Stop every replica daemon of this node (its teardown); the images stay."""
        for d in sorted((self.settings.state_dir / "replicas").glob("*")):
            await storage_daemon.stop(d / "qsd.pid", str(d))

    async def replica_promote(self, spec: InstanceSpec) -> int:
        """Run the instance here from its replica (its primary's node is dead): the daemon
        stops, the images become the instance's disks, QEMU starts. Returns QEMU's pid;
        repeating it after any crash goes on from where it stopped."""
        async with self._lock(spec.id):
            m = self.machines.get(spec.id)
            if m is not None and m.running and m.pid is not None:
                return m.pid
            d = self._replica_dir(spec.id)
            paths = self.paths(spec.id)
            if not d.exists() and not paths.disk.exists() and spec.root_volume is None:
                raise NotFound(
                    f"no replica of {spec.id} is on this node; it cannot start here from one",
                    resource="instance",
                )
            await self._take_disks(d, spec)
        pid = await self.instance_start(spec)
        self.event_log.append("replica-promoted", {"id": spec.id, "pid": pid})
        return pid

    # -- the primary ------------------------------------------------------------------------
    async def replica_mirror(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> ReplicaStatus:
        """Mirror every disk into the secondary's exports, write-blocking, never completed
        (idempotent: running mirrors are left alone; broken ones are replaced)."""
        m = self._source(iid)
        assert m.qmp is not None
        running = {j.node for j in await mirror.jobs(m.qmp) if j.status}
        stale = [d.node for d in disks if d.node not in running]
        if stale:  # a mirror that failed left its NBD block node behind
            await mirror.stop(m.qmp, stale, force=True)
        atomic_write(
            self._mirror_record(iid),
            json.dumps({"address": address, "port": port, "disks": [d.node for d in disks]}),
        )
        for d in disks:
            await mirror.start(m.qmp, d, address, port, "write-blocking", LINK_TIMEOUT)
        self.event_log.append("replica-mirrored", {"id": iid, "to": address})
        return await self.replica_status(iid)

    async def replica_stop(self, iid: str) -> None:
        """Stop replicating ``iid`` (its mirrors abandoned); idempotent."""
        record = self._mirror_record(iid)
        m = self.machines.get(iid)
        if m is not None and m.running and m.qmp is not None:
            nodes = [j.node for j in await mirror.jobs(m.qmp)]
            if record.exists():
                nodes = sorted(set(nodes) | set(json.loads(record.read_text())["disks"]))
            await mirror.stop(m.qmp, nodes, force=True)
        record.unlink(missing_ok=True)

    async def replica_status(self, iid: str) -> ReplicaStatus:
        m = self.machines.get(iid)
        record = self._mirror_record(iid)
        if m is None or not m.running or m.qmp is None:
            return ReplicaStatus(state=REPLICA_DEGRADED, reason="the instance does not run here")
        if not record.exists():
            return ReplicaStatus(state=REPLICA_DEGRADED, reason="replication is not started")
        want = set(json.loads(record.read_text())["disks"])
        jobs = [j for j in await mirror.jobs(m.qmp) if j.node in want]
        summary = mirror.summary(jobs)
        live = {j.node for j in jobs if j.status in ("running", "ready") and not j.error}
        if live != want:
            errors = "; ".join(f"{j.node}: {j.error}" for j in jobs if j.error)
            lost = ", ".join(sorted(want - live))
            return ReplicaStatus(
                state=REPLICA_DEGRADED,
                percent=float(summary["percent"]),
                disks=jobs,
                reason=f"the mirror of {lost} ended (the secondary or the link failed)"
                + (f": {errors}" if errors else ""),
            )
        state = REPLICA_IN_SYNC if summary["ready"] else REPLICA_SYNCING
        return ReplicaStatus(state=state, percent=float(summary["percent"]), disks=jobs)
