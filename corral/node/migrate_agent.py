"""Live migration without shared storage, the node's half (QEMU's iotest 194 recipe). Mixed
into ``NodeAgent``; the controller drives the steps in this order and may repeat any of them:

destination ``migrate_prepare``: the image must be here; an empty overlay on the same backing
and of the same virtual size, volumes created empty, the tap, QEMU started with
``-incoming defer`` and the same devices and MAC, and an NBD server serving the new disks
writable on a port of ``address`` (``driver.mirror.serve``).

source ``migrate_mirror``: every disk mirrored into those exports (the root overlay
``sync=top``, the base image being on both nodes; volumes ``sync=full``); ``migrate_status``
until every job is READY.

destination ``migrate_incoming``, then source ``migrate_start``: memory over TCP (the agents
hold the sockets; QEMU gets them by descriptor), bandwidth cap lifted, auto-converge, a downtime
limit that starts low and ramps when a pass over memory makes no progress. The source agent
watches it and cancels it at its time limit, so no migration runs on without bound even when
the controller is gone.

source ``migrate_complete`` (memory moved: the source is paused): the mirrors end
(``block-job-cancel``, which for a READY mirror means complete without pivot); destination
``migrate_finish``: its QEMU is running, the NBD server stops, ``announce-self`` tells the
switches where the MAC is now; only then source ``migrate_cleanup`` removes the source's
QEMU, tap and files (refused while the source VM runs).

Going back: source ``migrate_cancel`` (``migrate_cancel``, mirrors abandoned, a paused source
resumed) and destination ``migrate_abort`` (its QEMU, overlay, volumes made for it and tap
removed). ``migrate_abort`` refuses an instance that was not prepared as an incoming copy, and
``migrate_cleanup`` one whose QEMU still runs the guest, so a confused caller cannot remove the
only copy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import NotFound, WrongState
from corral.fsutil import atomic_write
from corral.images.manifest import Manifest
from corral.node.driver import cgroups, migration, mirror
from corral.node.driver.machine import Machine
from corral.node.driver.qmp import QmpUnavailable
from corral.node.events import EventLog
from corral.node.spec import (
    MIGRATION_TIMED_OUT,
    MIRROR_INCOMPLETE,
    QEMU_ADOPTED,
    Accel,
    ExitInfo,
    InstanceSpec,
    MemoryProgress,
    MigrationPrepared,
    MigrationStatus,
    MirrorDisk,
)
from corral.node.storage import volumes as volume_files
from corral.node.volume_agent import VolumeAgent

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.5
POLL = 0.02  # the guest is paused while the switch-over waits on these: poll often
# seconds an unacknowledged write may wait on the link to the destination before its mirror
# fails (the guest's writes wait on it meanwhile; TCP's own limit is many minutes); longer than
# a brief outage of the link, which the mirror rides out
MIRROR_LINK_TIMEOUT = 15.0
ACCEPT_TIMEOUT = 120.0  # seconds the destination waits for the source's memory stream
ANNOUNCE = {"initial": 50, "max": 550, "rounds": 5, "step": 100}
RUNNING = {"running"}


@dataclass
class _Incoming:
    """The destination's side of one migration (also kept in ``incoming.json``)."""

    prepared: MigrationPrepared
    peer: str
    created: list[str]  # volume ids made empty for it (removed again by abort)
    listener: socket.socket | None = None  # the memory stream's listener (the agent's)
    accept: asyncio.Task[None] | None = None
    error: str = ""


@dataclass
class _Outgoing:
    """The source's side of one migration."""

    disks: list[str] = field(default_factory=list)
    watch: asyncio.Task[None] | None = None
    ramp: migration.Ramp | None = None
    reason: str = ""
    started: float = 0.0
    mirrors_complete: bool = False  # every mirror ended complete after the memory moved


class MigrateAgent(VolumeAgent):
    event_log: EventLog
    _incoming: dict[str, _Incoming]
    _outgoing: dict[str, _Outgoing]
    memory_overhead: int

    # hooks the agent provides
    def _cgroup(self, iid: str) -> cgroups.Group:
        raise NotImplementedError

    async def _exit_handler(self, iid: str, info: ExitInfo) -> None:
        raise NotImplementedError

    async def accel(self) -> Accel:
        raise NotImplementedError

    async def instance_destroy(self, iid: str, tap: str | None = None) -> None:
        raise NotImplementedError

    async def instance_create(self, spec: InstanceSpec) -> None:
        raise NotImplementedError

    async def _launch(
        self, spec: InstanceSpec, manifest: Manifest, root: Path, extra: tuple[str, ...] = ()
    ) -> Machine:
        raise NotImplementedError

    def _incoming_file(self, iid: str) -> Path:
        return self.paths(iid).dir / "incoming.json"

    def _outgoing_file(self, iid: str) -> Path:
        """The source's record of a migration's mirrors and whether they ended complete: a
        restarted agent must still know them at the switch-over."""
        return self.paths(iid).dir / "outgoing.json"

    def _outgoing_record(self, iid: str) -> _Outgoing | None:
        out = self._outgoing.get(iid)
        if out is None:
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(self._outgoing_file(iid).read_text())
                out = _Outgoing(
                    disks=list(rec["disks"]), mirrors_complete=bool(rec["mirrors_complete"])
                )
                self._outgoing[iid] = out
        return out

    def _save_outgoing(self, iid: str, out: _Outgoing) -> None:
        atomic_write(
            self._outgoing_file(iid),
            json.dumps({"disks": out.disks, "mirrors_complete": out.mirrors_complete}),
        )

    # -- destination ------------------------------------------------------------------------
    async def migrate_prepare(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> MigrationPrepared:
        """Get ready to take ``spec``'s instance: disks, tap, QEMU waiting for it, NBD
        serving its disks on ``address``. Repeating it returns the same ports and exports."""
        async with self._lock(spec.id):
            have = self._incoming.get(spec.id)
            m = self.machines.get(spec.id)
            if have is not None and m is not None and m.running:
                return have.prepared
            if have is None and self.paths(spec.id).dir.exists():
                raise WrongState(
                    f"instance {spec.id} already has files on this node; migrate it to another "
                    "node, or remove its leftovers (migrate_abort) first",
                    resource="instance",
                )
            manifest = self.images.get_manifest(spec.image)  # NotFound: pull it first
            missing = [v.id for v in spec.volumes if v.id not in sizes]
            if spec.root_volume is not None and spec.root_volume not in sizes:
                missing.append(spec.root_volume)
            if missing:
                raise WrongState(
                    f"the sizes of volumes {', '.join(missing)} are needed to create them here",
                    resource="volume",
                )
            created = []
            for vid in [v.id for v in spec.volumes] + (
                [spec.root_volume] if spec.root_volume else []
            ):
                if not self._volume(vid).exists():
                    await volume_files.create(self._volume(vid), sizes[vid])
                    created.append(vid)
            paths = self.paths(spec.id)
            await self.instance_create(spec)  # the overlay (same backing, same size), tap
            root = self._volume(spec.root_volume) if spec.root_volume else paths.disk
            # paused when the memory is in (-S): the guest continues only once the source's
            # mirrors have ended and the NBD server is gone (migrate_finish)
            m = await self._launch(spec, manifest, root, ("-S", "-incoming", "defer"))
            assert m.qmp is not None
            await migration.setup_destination(m.qmp)
            nodes = [spec.root_volume or "root"] + [v.id for v in spec.volumes]
            exports = {n: secrets.token_hex(16) for n in nodes}
            nbd = _listen(address)
            try:
                await mirror.serve(m.qmp, nbd, exports)
                nbd_port = nbd.getsockname()[1]
            finally:
                nbd.close()  # QEMU has its own copy
            mig = _listen(address)
            prepared = MigrationPrepared(
                address=address,
                nbd_port=nbd_port,
                migration_port=mig.getsockname()[1],
                exports=exports,
            )
            self._incoming[spec.id] = _Incoming(
                prepared=prepared, peer=peer, created=created, listener=mig
            )
            atomic_write(
                self._incoming_file(spec.id),
                json.dumps({"prepared": prepared.model_dump(), "peer": peer, "created": created}),
            )
            self.event_log.append("instance-incoming", {"id": spec.id, "pid": m.pid})
            return prepared

    async def migrate_incoming(self, iid: str) -> None:
        """Take the memory stream on the prepared port (the source connects next)."""
        inc = self._incoming.get(iid)
        if inc is None or inc.listener is None:
            raise WrongState(
                f"no migration of {iid} is prepared on this node (or its agent restarted since); "
                "cancel the migration and start it again",
                resource="instance",
            )
        if inc.accept is None:
            inc.accept = asyncio.create_task(self._accept(iid, inc), name=f"incoming-{iid}")

    async def _accept(self, iid: str, inc: _Incoming) -> None:
        assert inc.listener is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, (host, _) = await asyncio.wait_for(
                    loop.sock_accept(inc.listener), ACCEPT_TIMEOUT
                )
                if inc.peer and host != inc.peer:
                    log.warning("%s: refused a migration stream from %s", iid, host)
                    conn.close()
                    continue
                break
            conn.setblocking(True)
            m = self.machines.get(iid)
            if m is None or m.qmp is None:
                conn.close()
                raise WrongState(f"the incoming QEMU of {iid} is gone")
            try:
                await m.qmp.get_fd(conn.fileno(), migration.FD_IN)
            finally:
                conn.close()
            await migration.incoming(m.qmp)
        except (OSError, TimeoutError, QmpUnavailable, WrongState) as err:
            inc.error = str(err) or type(err).__name__
            log.warning("%s: the incoming migration failed: %s", iid, inc.error)
        finally:
            inc.listener.close()
            inc.listener = None

    async def migrate_finish(self, iid: str, timeout: float = 60.0) -> str:
        """The destination takes over. Its QEMU waits paused (``-S``, block devices inactive:
        ``late-block-activate``) once the memory is in; the source has ended its mirrors (their
        last writes copied) before this is called. Here the NBD server stops, the guest
        continues (its disks activated only now, so no mirror write can land after the guest's
        own), and the MAC is announced. Returns the run state ("running")."""
        m = self.machines.get(iid)
        if m is None or not m.running or m.qmp is None:
            raise WrongState(f"instance {iid} does not run on this node", resource="instance")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        status = await m.status()
        while status not in ("paused", "running") and loop.time() < deadline:
            await asyncio.sleep(POLL)
            status = await m.status()
        resumed = status == "paused"
        if resumed:
            mem = await migration.progress(m.qmp)
            if mem.status != "completed":
                raise WrongState(
                    f"the incoming migration of {iid} is {mem.status!r}, not completed",
                    resource="instance",
                )
            await mirror.unserve(m.qmp)
            await m.qmp.execute("cont", timeout=30)
            status = await m.status()
        if status not in RUNNING:
            raise WrongState(
                f"instance {iid} is {status!r} on this node, not running: the migration has "
                "not completed",
                resource="instance",
            )
        if not resumed:  # a repeated call: the first may have stopped before this
            await mirror.unserve(m.qmp)
        with contextlib.suppress(QmpUnavailable):
            await m.qmp.execute("announce-self", ANNOUNCE)
        inc = self._incoming.pop(iid, None)
        if inc is not None and inc.listener is not None:
            inc.listener.close()
        self._incoming_file(iid).unlink(missing_ok=True)
        self.event_log.append("instance-arrived", {"id": iid, "pid": m.pid})
        return status

    async def migrate_abort(self, iid: str, tap: str | None = None) -> None:
        """Remove an incoming copy: its QEMU, overlay, the volumes made for it, its tap."""
        inc = self._incoming.pop(iid, None)
        record = self._incoming_file(iid)
        created: list[str] = []
        if record.exists():
            with contextlib.suppress(ValueError, OSError):
                created = list(json.loads(record.read_text()).get("created", []))
        elif inc is None:
            if self.paths(iid).dir.exists():
                raise WrongState(
                    f"instance {iid} on this node is not an incoming migration: refusing to "
                    "remove it",
                    resource="instance",
                )
            return
        if inc is not None:
            created = created or inc.created
            if inc.accept is not None:
                inc.accept.cancel()
            if inc.listener is not None:
                inc.listener.close()
        await self.instance_destroy(iid, tap)
        for vid in created:
            volume_files.remove(self._volume(vid))
        self.event_log.append("instance-incoming-removed", {"id": iid})

    # -- source -----------------------------------------------------------------------------
    def _source(self, iid: str) -> Machine:
        m = self.machines.get(iid)
        if m is None or not m.running or m.qmp is None:
            raise WrongState(f"instance {iid} does not run on this node", resource="instance")
        return m

    @staticmethod
    def _refuse_adopted(iid: str, m: Machine) -> None:
        """A migration out of a QEMU this agent adopted is refused (``QEMU_ADOPTED``)."""
        if m.adopted:
            raise WrongState(
                f"instance {iid} runs in a QEMU that this node's agent took over after a "
                "restart; live migrations out of such a QEMU have left guests with corrupt "
                "memory (docs/SPEC.md, live migration under faults) and are refused until that "
                "is explained: stop and start the instance (a new QEMU), then migrate it",
                resource="instance",
                reason=QEMU_ADOPTED,
            )

    async def migrate_mirror(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> MigrationStatus:
        """Start copying every disk to the destination's exports (idempotent). Refused for a
        QEMU this agent adopted (``QEMU_ADOPTED``)."""
        m = self._source(iid)
        self._refuse_adopted(iid, m)
        assert m.qmp is not None
        out = self._outgoing.setdefault(iid, _Outgoing())
        out.disks = [d.node for d in disks]
        out.reason = ""
        out.mirrors_complete = False
        self._save_outgoing(iid, out)
        for d in disks:
            await mirror.start(m.qmp, d, address, port, "write-blocking", MIRROR_LINK_TIMEOUT)
        return await self.migrate_status(iid)

    async def migrate_start(
        self,
        iid: str,
        address: str,
        port: int,
        timeout: float = 600.0,
        downtime_ms: int = migration.DOWNTIME_START_MS,
        max_downtime_ms: int = migration.DOWNTIME_MAX_MS,
    ) -> MigrationStatus:
        """Send the VM's memory to the destination; cancelled at ``timeout`` seconds. A
        migration already under way (an earlier call, perhaps of the agent before a restart)
        is reported, not started again; a new one out of an adopted QEMU is refused."""
        m = self._source(iid)
        assert m.qmp is not None
        out = self._outgoing_record(iid) or self._outgoing.setdefault(iid, _Outgoing())
        now = await migration.progress(m.qmp)
        if now.status in migration.ACTIVE or _sent(now, await m.status()):
            return await self.migrate_status(iid)
        self._refuse_adopted(iid, m)
        jobs = await mirror.jobs(m.qmp)
        waiting = [j.node for j in jobs if not j.ready]
        if waiting or {j.node for j in jobs} != set(out.disks):
            raise WrongState(
                f"the disks of {iid} are not mirrored yet ({', '.join(waiting) or 'no jobs'}); "
                "wait for every mirror to be ready",
                resource="instance",
            )
        out.ramp = migration.Ramp(downtime_ms, max_downtime_ms)
        out.reason = ""
        await migration.setup_source(m.qmp, out.ramp.limit)
        sock = await asyncio.to_thread(mirror.connect, address, port)
        try:
            await m.qmp.get_fd(sock.fileno(), migration.FD_OUT)
        finally:
            sock.close()
        await migration.start(m.qmp)
        out.started = time.monotonic()
        out.watch = asyncio.create_task(self._watch(iid, out, timeout), name=f"migrate-{iid}")
        return await self.migrate_status(iid)

    async def _watch(self, iid: str, out: _Outgoing, timeout: float) -> None:
        """Ramp the downtime limit; cancel the migration at its time limit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            m = self.machines.get(iid)
            if m is None or not m.running or m.qmp is None:
                return
            try:
                p = await migration.progress(m.qmp)
                if p.status not in migration.ACTIVE:
                    return
                if loop.time() >= deadline:
                    out.reason = f"{MIGRATION_TIMED_OUT}: not converged within {timeout:.0f} s"
                    log.warning("%s: %s; cancelling", iid, out.reason)
                    await migration.cancel(m.qmp)
                    return
                assert out.ramp is not None
                limit = out.ramp.feed(p)
                if limit is not None:
                    log.info("%s: migration not converging; downtime limit %d ms", iid, limit)
                    await migration.set_downtime(m.qmp, limit)
            except QmpUnavailable:
                return

    async def migrate_status(self, iid: str) -> MigrationStatus:
        m = self.machines.get(iid)
        out = self._outgoing_record(iid)
        if m is None or not m.running or m.qmp is None:
            return MigrationStatus(
                phase="none", vm_status="exited", reason=(out and out.reason) or ""
            )
        jobs = await mirror.jobs(m.qmp)
        mem = await migration.progress(m.qmp)
        vm_status = await m.status()
        disks = mirror.summary(jobs)
        if _sent(mem, vm_status):
            phase = "completed"
        elif mem.status in migration.ACTIVE:
            phase = "migrating"
        elif mem.status in ("failed", "cancelled") and out is not None and out.started:
            phase = "cancelled" if mem.status == "cancelled" else "failed"
        elif jobs:
            phase = "mirrored" if disks["ready"] else "mirroring"
        elif out is not None and out.disks and not jobs:
            phase = "failed"  # the jobs ended by themselves: an error (the target went away)
        else:
            phase = "none"
        reason = (out.reason if out else "") or mem.error
        return MigrationStatus(
            phase=phase,
            disks=jobs,
            disk_percent=float(disks["percent"]),
            memory=mem if mem.status != "none" else MemoryProgress(),
            downtime_limit_ms=out.ramp.limit if out and out.ramp else 0,
            reason=reason,
            vm_status=vm_status,
            mirrors_complete=bool(out and out.mirrors_complete),
        )

    async def migrate_wait(
        self, iid: str, wait: float = 1.0, end_mirrors: bool = False
    ) -> MigrationStatus:
        """The status once the memory migration is no longer under way, or after ``wait``
        seconds: the caller hears of the end within a poll (the guest is paused until the
        switch-over is done, so it must not wait long). ``end_mirrors``: a completed
        migration's mirrors are ended here at once (``migrate_complete``), one round trip
        fewer while the guest is paused."""
        m = self.machines.get(iid)
        if m is not None and m.running and m.qmp is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while loop.time() < deadline:
                try:
                    if (await migration.progress(m.qmp)).status not in migration.ACTIVE:
                        break
                except QmpUnavailable:
                    break
                await asyncio.sleep(POLL)
        st = await self.migrate_status(iid)
        if end_mirrors and st.phase == "completed" and not st.mirrors_complete:
            try:
                await self.migrate_complete(iid)
            except mirror.MirrorFailed as err:
                # the controller hears it again from migrate_complete and rolls back
                log.warning("%s: %s", iid, err.message)
            st = await self.migrate_status(iid)
        return st

    async def migrate_complete(self, iid: str) -> None:
        """Memory has moved (the source is paused): end the mirrors, their last writes copied.
        Raises ``MirrorFailed`` (reason ``mirror-incomplete``) unless every mirror of this
        migration ended complete: then the destination's disks lack writes and it must not
        run the guest. Without this node's record of the migration's mirrors (``outgoing.json``)
        it cannot tell, and says so the same way. Repeatable: once ended complete, it says so."""
        m = self._source(iid)
        assert m.qmp is not None
        mem = await migration.progress(m.qmp)
        if not _sent(mem, await m.status()):
            raise WrongState(
                f"the migration of {iid} from this node is {mem.status!r}, not completed",
                resource="instance",
            )
        out = self._outgoing_record(iid)
        if out is None or not out.disks:
            raise mirror.MirrorFailed(
                f"this node has no record of the disk mirrors of {iid}: the destination's "
                "disks may lack writes",
                reason=MIRROR_INCOMPLETE,
            )
        if out.mirrors_complete:
            return
        await mirror.stop(m.qmp, out.disks)
        out.mirrors_complete = True
        self._save_outgoing(iid, out)

    async def migrate_cancel(self, iid: str, resume: bool = True) -> MigrationStatus:
        """Call the migration off on the source: memory migration cancelled, the mirrors
        abandoned, and (``resume``) a VM left paused by a finished migration running again.
        The destination's copy must be gone first when the migration had completed."""
        m = self._source(iid)
        assert m.qmp is not None
        out = self._outgoing_record(iid)
        if out is not None and out.watch is not None:
            out.watch.cancel()
        await migration.cancel(m.qmp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await migration.progress(m.qmp)).status in migration.ACTIVE:
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        nodes = [j.node for j in await mirror.jobs(m.qmp)]
        if out is not None:
            nodes = sorted(set(nodes) | set(out.disks))
        await mirror.stop(m.qmp, nodes, force=True)
        if resume and await m.status() in ("postmigrate", "paused", "finish-migrate"):
            await m.qmp.execute("cont")
        status = await self.migrate_status(iid)
        self._outgoing.pop(iid, None)
        self._outgoing_file(iid).unlink(missing_ok=True)
        return status

    async def migrate_cleanup(
        self, iid: str, tap: str | None = None, volumes: list[str] | None = None
    ) -> None:
        """Remove the source's copy after the destination confirmed it runs the guest: its
        QEMU (paused by the finished migration), tap, files and the given volumes. Refused
        while the source VM runs: that copy is the only one."""
        m = self.machines.get(iid)
        if m is not None and m.running:
            status = await m.status()
            if status not in ("postmigrate", "paused", "shutdown"):
                raise WrongState(
                    f"instance {iid} is {status!r} on this node: refusing to remove a copy that "
                    "runs",
                    resource="instance",
                )
        self._outgoing.pop(iid, None)
        self._outgoing_file(iid).unlink(missing_ok=True)
        await self.instance_destroy(iid, tap)
        for vid in volumes or []:
            volume_files.remove(self._volume(vid))
        self.event_log.append("instance-departed", {"id": iid})


def _sent(mem: MemoryProgress, vm_status: str) -> bool:
    """Did this VM's memory leave (an outgoing migration completed, the VM paused for it)? A
    VM that came here by migration also reports a completed migration: its incoming one."""
    return mem.status == "completed" and vm_status in ("postmigrate", "finish-migrate")


def _listen(address: str) -> socket.socket:
    """A listening TCP socket on ``address`` and a free port, in the agent's namespace."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    try:
        sock.bind((address, 0))
        sock.listen(4)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise NotFound(
            f"cannot listen on {address} for the migration ({err.strerror}); is it this "
            "node's address?",
            field="address",
        ) from err
    return sock
