"""A node that only flips states: for fast controller tests and for benchmarks that need more
instances than this machine can boot (always labelled so). Never a substitute for the agent in
integration tests."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

from corral.errors import CorralError, EnvironmentProblem, Invalid, NotFound, WrongState
from corral.images.store import ImageStore
from corral.node import image_pull
from corral.node.events import EventLog
from corral.node.spec import (
    GUEST_HOLDS_DISK,
    LAUNCH_FAILED,
    MIRROR_INCOMPLETE,
    QEMU_ADOPTED,
    REPLICA_DEGRADED,
    REPLICA_IN_SYNC,
    Accel,
    Confinement,
    CreditStatus,
    EventBatch,
    ExitInfo,
    HealthCheck,
    HostRecord,
    InstanceMetadata,
    InstanceSpec,
    InstanceStats,
    MigrationPrepared,
    MigrationStatus,
    MirrorDisk,
    NetworkSpec,
    NodeInfo,
    NodeStats,
    ObservedInstance,
    OverlaySpec,
    PolicySpec,
    ReplicaServed,
    ReplicaStatus,
    RouterSpec,
)


class FakeNode:
    def __init__(
        self,
        name: str = "fake",
        images: ImageStore | None = None,
        *,
        cpus: int = 2,
        memory: int = 8 << 30,
        disk: int = 1 << 40,
        arch: str = "x86_64",
        zone: str = "",
        serve_metadata: bool = False,
    ) -> None:
        self.name = name
        self.serve_metadata = serve_metadata  # as a joined node: documents pushed here
        self.metadata: dict[str, list[InstanceMetadata]] = {}  # network -> documents
        self.size = {"cpus": cpus, "memory": memory, "disk": disk}
        self.arch, self.zone = arch, zone
        self.images = images  # captured images go here when given
        self.volumes: dict[str, int] = {}
        self.snapshots: dict[str, str] = {}
        self.specs: dict[str, InstanceSpec] = {}
        self.running: dict[str, int] = {}
        self.exits: dict[str, ExitInfo] = {}
        # what `stats` reports for a running instance (tests set them; zero otherwise)
        self.counters: dict[str, InstanceStats] = {}
        self.hosts: dict[str, list[HostRecord]] = {}
        self.policies: dict[str, PolicySpec] = {}
        self.overlays: dict[tuple[str, int], OverlaySpec] = {}
        self.routers: dict[str, RouterSpec] = {}  # namespace -> its VPC router's last push
        self.dns: dict[str, str] = {}
        self.heartbeats: list[tuple[str, int, int, float, list[str]]] = []
        self.heard_peers: dict[str, float] = {}  # peer -> seconds since it said hello
        self.fail_start: set[str] = set()
        self.plugged: dict[str, set[str]] = {}  # instance -> volumes hot-plugged
        self.io_limits: dict[str, tuple[int, int, int]] = {}  # volume -> iops, burst, bytes/s
        self.held: set[str] = set()  # volumes the "guest" refuses to release
        self.unhealthy: set[str] = set()  # addresses whose health check fails
        self.closed_ports: set[int] = set()  # ports port_connect finds closed
        self.port_stalls: list[float] = []  # seconds the next port_connects wait (a busy node)
        self.calls: list[tuple[str, str]] = []
        self._servers: set[asyncio.Task[None]] = set()  # pretend servers behind port_connect
        self._pids = itertools.count(10000)
        self.event_log = EventLog(None, name)
        self.incoming: dict[str, MigrationPrepared] = {}  # prepared migrations to here
        self.outgoing: dict[str, str] = {}  # instance -> migration phase from here
        self.never_converge: set[str] = set()  # instances whose migration times out
        # instances whose disk mirror fails at the switch-over (its last writes not copied)
        self.mirror_fails: set[str] = set()
        self.adopted: set[str] = set()  # instances whose QEMU a restarted agent took over
        self.checked_from: dict[str, str] = {}  # address -> the namespace of its last check
        # high availability (the agent's is corral.node.replica_agent)
        self.replicas: dict[str, InstanceSpec] = {}  # replicas kept here (secondary)
        self.mirrors: dict[str, str] = {}  # instance -> replica state (primary)
        # cold moves (the agent's is corral.node.evacuate_agent)
        self.arriving: dict[str, InstanceSpec] = {}  # copies received here, not yet taken
        self.fail_send: set[str] = set()  # instances whose copy "differs" at the source

    # -- images: with a store, as the agent (corral.node.image_pull); without, it has all -----
    async def image_missing(self, manifests: list[str], blobs: list[str]) -> list[str]:
        return [] if self.images is None else image_pull.missing(self.images, manifests, blobs)

    async def image_blob_put(
        self, sha256: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.images is None:
            raise WrongState("this fake node keeps no images", resource="image")
        return await image_pull.receive_blob(self.images, sha256)

    async def image_manifest_put(self, digest: str, manifest: str) -> None:
        if self.images is not None:
            image_pull.put_manifest(self.images, digest, manifest)

    async def heartbeat(
        self,
        session: str = "",
        seq: int = 0,
        confirmed: int = 0,
        fence_after: float = 0.0,
        peers: list[str] | None = None,
    ) -> str:
        self.heartbeats.append((session, seq, confirmed, fence_after, list(peers or [])))
        return self.name

    async def peer_heard(self, addresses: list[str]) -> list[float | None]:
        return [self.heard_peers.get(a) for a in addresses]

    async def info(self) -> NodeInfo:
        return NodeInfo(
            name=self.name,
            cpus=self.size["cpus"],
            memory=self.size["memory"],
            qemu="fake",
            qemu_version="0",
            accel=Accel(accel="tcg", reason="fake node"),
            namespace="fake",
            cgroup="none",
            dnsmasq="",
            nft="",
            arch=self.arch,
            disk=self.size["disk"],
            zone=self.zone,
            facts={"migration_address": "127.0.0.1"},
            metadata=self.serve_metadata,
        )

    async def network_ensure(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None:
        self.hosts[spec.id] = list(hosts)

    async def overlay_ensure(self, spec: OverlaySpec) -> None:
        self.overlays[(spec.namespace, spec.vni)] = spec

    async def overlay_remove(self, namespace: str, vni: int) -> None:
        self.overlays.pop((namespace, vni), None)

    async def router_ensure(self, spec: RouterSpec) -> None:
        self.routers[spec.namespace] = spec

    async def network_hosts(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None:
        self.hosts[spec.id] = list(hosts)

    async def network_policy(self, policy: PolicySpec) -> None:
        self.policies[policy.network.id] = policy

    async def network_remove(self, spec: NetworkSpec) -> None:
        self.calls.append(("network_remove", spec.id))
        for d in (self.hosts, self.policies, self.metadata):
            d.pop(spec.id, None)

    async def metadata_put(self, network: NetworkSpec, documents: list[InstanceMetadata]) -> None:
        self.metadata[network.id] = list(documents)

    async def dns_update(self, put: dict[str, str], remove: list[str]) -> None:
        for name in remove:
            self.dns.pop(name, None)
        self.dns.update(put)

    async def instance_create(self, spec: InstanceSpec) -> None:
        self.calls.append(("create", spec.id))
        self._check_generation(spec)
        self.specs[spec.id] = spec

    def _network_here(self, spec: InstanceSpec) -> None:
        """As the agent's: an arriving instance's tap goes on its network's bridge here."""
        if spec.network.id not in self.hosts:
            raise WrongState(f"network {spec.network.id} is not on this node", resource="network")

    def _check_generation(self, spec: InstanceSpec) -> None:
        from corral.node.fence import check_generation

        held = self.specs.get(spec.id)
        check_generation(spec.id, held.generation if held else 0, spec.generation)

    async def instance_start(self, spec: InstanceSpec) -> int:
        self.calls.append(("start", spec.id))
        self._check_generation(spec)
        if spec.id in self.fail_start:
            raise CorralError(f"fake launch failure for {spec.id}", reason=LAUNCH_FAILED)
        self.specs[spec.id] = spec
        if spec.id not in self.running:
            self.running[spec.id] = next(self._pids)
            self.plugged[spec.id] = {v.id for v in spec.volumes}
            self.event_log.append("instance-started", {"id": spec.id, "pid": self.running[spec.id]})
        self.exits.pop(spec.id, None)
        return self.running[spec.id]

    async def instance_stop(self, iid: str, timeout: float, force: bool = False) -> ExitInfo | None:
        self.calls.append(("stop", iid))
        if self.running.pop(iid, None) is not None:
            self.exits[iid] = ExitInfo(reason="requested", time=time.time())
        return self.exits.get(iid)

    async def instance_reboot(self, iid: str, timeout: float) -> str:
        if iid not in self.running:
            raise WrongState(f"{iid} is not running")
        return "guest"

    async def instance_destroy(self, iid: str, tap: str | None = None) -> None:
        self.calls.append(("destroy", iid))
        self.running.pop(iid, None)
        self.specs.pop(iid, None)
        self.exits.pop(iid, None)

    async def instances(self) -> list[ObservedInstance]:
        return [
            ObservedInstance(
                id=i,
                running=i in self.running,
                pid=self.running.get(i),
                status="running" if i in self.running else "",
                exit=self.exits.get(i),
                generation=self.specs[i].generation,
                adopted=i in self.adopted and i in self.running,
            )
            for i in self.specs
        ]

    async def instance_credits(self, iid: str, mode: str | None = None) -> CreditStatus | None:
        """A burstable instance's bucket as a node that ran no CPU would keep it: full."""
        spec = self.specs.get(iid)
        if spec is None:
            raise NotFound(f"instance {iid} is not on this node", resource="instance")
        if mode is not None:
            if mode not in ("standard", "unlimited"):
                raise Invalid(f"CPU credit mode {mode!r} must be standard or unlimited")
            spec = self.specs[iid] = spec.model_copy(update={"cpu_credit_mode": mode})
        ceiling = spec.cpu_limit or float(spec.cpus)
        if not 0 < spec.cpu_baseline < ceiling:
            return None
        return CreditStatus(
            mode=spec.cpu_credit_mode,
            baseline=spec.cpu_baseline,
            ceiling=ceiling,
            balance=spec.cpu_credit_max,
            maximum=spec.cpu_credit_max,
            surplus=0.0,
            held=False,
            quota=ceiling,
        )

    async def instance_confinement(self, iid: str) -> Confinement | None:
        """What a confined QEMU would show (the fake runs no process: labelled so)."""
        if iid not in self.running:
            return None
        return Confinement(
            pid=self.running[iid],
            uid=1 << 30,
            gid=1 << 30,
            capabilities="0",
            seccomp="filter",
            no_new_privs=True,
            sandbox="fake",
            jail=f"/fake/{iid}.jail",
            own_mount_namespace=True,
            cgroup="fake",
            devices="fake",
            block_io="fake",
        )

    async def console_log(self, iid: str, tail: int = 65536) -> bytes:
        return b"fake console\n"

    async def console_connect(self, iid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise WrongState("the fake node has no consoles")

    async def port_connect(
        self, iid: str, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to a pretend server: it greets with ``fake <iid> <address>:<port>`` and
        echoes what it gets until the caller closes (a unix socket pair, nothing listens)."""
        self.calls.append(("port_connect", f"{iid}:{port}"))
        if iid not in self.running:
            raise WrongState(f"instance {iid} is not running", resource="instance")
        if self.port_stalls:
            await asyncio.sleep(self.port_stalls.pop(0))
        if port in self.closed_ports:
            raise WrongState(f"port {port} of {iid} does not answer", resource="instance")
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs)

        async def serve() -> None:
            try:
                writer.write(f"fake {iid} {address}:{port}\n".encode())
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        task = asyncio.create_task(serve())
        self._servers.add(task)
        task.add_done_callback(self._servers.discard)
        return await asyncio.open_connection(sock=ours)

    async def volume_create(
        self,
        vid: str,
        size: int,
        snapshot_id: str | None = None,
        image_digest: str | None = None,
        fs: str | None = None,
        label: str = "",
    ) -> None:
        self.calls.append(("volume_create", vid))
        if snapshot_id is not None and snapshot_id not in self.snapshots:
            raise NotFound(f"snapshot {snapshot_id} is not on this node", resource="snapshot")
        self.volumes[vid] = size

    async def volume_delete(self, vid: str) -> None:
        self.calls.append(("volume_delete", vid))
        self.volumes.pop(vid, None)

    async def volume_attach(
        self, iid: str, vid: str, iops: int = 0, iops_burst: int = 0, bps: int = 0
    ) -> bool:
        self.calls.append(("volume_attach", vid))
        self.io_limits[vid] = (iops, iops_burst, bps)
        if iid not in self.running:
            return False
        self.plugged.setdefault(iid, set()).add(vid)
        return True

    async def volume_detach(self, iid: str, vid: str, timeout: float = 20.0) -> bool:
        self.calls.append(("volume_detach", vid))
        if iid not in self.running:
            return False
        if vid in self.held:
            raise WrongState(
                f"the guest did not release {vid} within {timeout:.0f} s",
                resource="volume",
                reason=GUEST_HOLDS_DISK,
            )
        self.plugged.get(iid, set()).discard(vid)
        return True

    async def instance_volumes(self, iid: str) -> list[str]:
        return sorted(self.plugged.get(iid, set())) if iid in self.running else []

    async def snapshot_create(self, sid: str, vid: str, instance_id: str | None = None) -> str:
        self.calls.append(("snapshot_create", sid))
        if vid not in self.volumes:
            raise NotFound(f"volume {vid} is not on this node", resource="volume")
        self.snapshots[sid] = vid
        return "live" if instance_id in self.running else "offline"

    async def health_check(self, address: str, check: HealthCheck, namespace: str = "") -> str:
        self.calls.append(("health_check", address))
        self.checked_from[address] = namespace
        return "" if address not in self.unhealthy else f"{address}:{check.port} refused"

    async def instance_relink(self, iid: str, down: float = 0.3) -> bool:
        self.calls.append(("relink", iid))
        return iid in self.running

    async def ping(self, address: str, count: int = 1) -> bool:
        return address not in self.unhealthy

    async def address_moved(self, network: NetworkSpec, address: str) -> None:
        self.calls.append(("address_moved", address))

    async def snapshot_delete(self, sid: str) -> None:
        self.calls.append(("snapshot_delete", sid))
        self.snapshots.pop(sid, None)

    async def image_capture(
        self,
        base_digest: str,
        name: str,
        version: str,
        description: str,
        instance_id: str | None = None,
        snapshot_id: str | None = None,
    ) -> str:
        """A new manifest naming the base's parts (the fake copies no disk)."""
        self.calls.append(("image_capture", instance_id or snapshot_id or base_digest))
        if self.images is None:
            raise WrongState("this fake node has no image store")
        if not base_digest:  # no kernel known: the disk boots by firmware
            base = self.images.list()[0]
            return self.images.put_manifest(
                base.model_copy(
                    update={
                        "name": name,
                        "version": version,
                        "kind": "imported",
                        "description": description,
                        "kernel": None,
                        "initrd": None,
                        "cmdline": "",
                        "base": None,
                        "build_key": f"fake-{snapshot_id}",
                    }
                )
            )
        base = self.images.get_manifest(base_digest)
        manifest = base.model_copy(
            update={
                "name": name,
                "version": version,
                "description": description,
                "base": base_digest,
                "build_key": f"fake-{instance_id or snapshot_id}",
            }
        )
        return self.images.put_manifest(manifest)

    async def image_delete(self, digest: str) -> None:
        if self.images is not None:
            self.images.remove(digest)

    async def events(self, after: int = 0, epoch: str = "", wait: float = 0.0) -> EventBatch:
        return await self.event_log.read(after, epoch, wait)

    async def stats(self) -> NodeStats:
        """The counters tests set, for running instances only (the fake runs no QEMU)."""
        out = []
        for iid in sorted(self.running):
            spec = self.specs[iid]
            base = self.counters.get(iid) or InstanceStats(id=iid)
            out.append(
                base.model_copy(
                    update={
                        "cpu_limit": spec.cpu_limit,
                        "vcpus": spec.cpus,
                        "memory_limit": spec.memory,
                    }
                )
            )
        return NodeStats(
            time=time.time(),
            cpus=int(self.size["cpus"]),
            cpu_seconds=0.0,
            load1=0.0,
            memory_total=int(self.size["memory"]),
            memory_available=int(self.size["memory"]),
            instances=out,
        )

    async def teardown(self) -> None:
        self.calls.append(("teardown", self.name))

    # -- live migration: states only (the agent's is corral.node.migrate_agent) -------------
    async def migrate_prepare(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> MigrationPrepared:
        self.calls.append(("migrate_prepare", spec.id))
        self._network_here(spec)
        if spec.id in self.specs and spec.id not in self.incoming:
            raise WrongState(f"instance {spec.id} already has files on this node")
        if spec.id not in self.incoming:
            self.specs[spec.id] = spec
            self.running[spec.id] = next(self._pids)
            nodes = [spec.root_volume or "root"] + [v.id for v in spec.volumes]
            self.incoming[spec.id] = MigrationPrepared(
                address=address,
                nbd_port=10809,
                migration_port=49152,
                exports={n: f"export-{n}" for n in nodes},
            )
        return self.incoming[spec.id]

    async def migrate_incoming(self, iid: str) -> None:
        if iid not in self.incoming:
            raise WrongState(f"no migration of {iid} is prepared on this node")

    async def migrate_mirror(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> MigrationStatus:
        if iid not in self.running:
            raise WrongState(f"instance {iid} does not run on this node")
        if iid in self.adopted:
            raise WrongState(f"fake: {iid} runs in an adopted QEMU", reason=QEMU_ADOPTED)
        self.outgoing[iid] = "mirrored"
        return await self.migrate_status(iid)

    async def migrate_start(
        self,
        iid: str,
        address: str,
        port: int,
        timeout: float = 600.0,
        downtime_ms: int = 50,
        max_downtime_ms: int = 1000,
    ) -> MigrationStatus:
        self.calls.append(("migrate_start", iid))
        if self.outgoing.get(iid) not in ("mirrored", "completed"):
            raise WrongState(f"the disks of {iid} are not mirrored yet")
        self.outgoing[iid] = "cancelled" if iid in self.never_converge else "completed"
        return await self.migrate_status(iid)

    async def migrate_status(self, iid: str) -> MigrationStatus:
        if iid not in self.running:
            return MigrationStatus(phase="none", vm_status="exited")
        phase = self.outgoing.get(iid, "none")
        return MigrationStatus(
            phase=phase,
            disk_percent=100.0 if phase != "none" else 0.0,
            reason="migration-timed-out: fake" if phase == "cancelled" else "",
            vm_status="postmigrate" if phase == "completed" else "running",
        )

    async def migrate_wait(
        self, iid: str, wait: float = 1.0, end_mirrors: bool = False
    ) -> MigrationStatus:
        await asyncio.sleep(min(wait, 0.01))
        return await self.migrate_status(iid)

    async def migrate_complete(self, iid: str) -> None:
        self.calls.append(("migrate_complete", iid))
        if self.outgoing.get(iid) != "completed":
            raise WrongState(f"the migration of {iid} has not completed")
        if iid in self.mirror_fails:
            raise CorralError(
                f"fake: the disk mirror of {iid} did not end complete", reason=MIRROR_INCOMPLETE
            )

    async def migrate_cancel(self, iid: str, resume: bool = True) -> MigrationStatus:
        self.calls.append(("migrate_cancel", iid))
        self.outgoing.pop(iid, None)
        return await self.migrate_status(iid)

    async def migrate_finish(self, iid: str, timeout: float = 60.0) -> str:
        self.calls.append(("migrate_finish", iid))
        if iid not in self.running:
            raise WrongState(f"instance {iid} does not run on this node")
        self.incoming.pop(iid, None)
        return "running"

    async def migrate_abort(self, iid: str, tap: str | None = None) -> None:
        self.calls.append(("migrate_abort", iid))
        if iid not in self.incoming:
            if iid in self.specs:
                raise WrongState(f"instance {iid} on this node is not an incoming migration")
            return
        self.incoming.pop(iid)
        await self.instance_destroy(iid, tap)

    async def migrate_cleanup(
        self, iid: str, tap: str | None = None, volumes: list[str] | None = None
    ) -> None:
        self.calls.append(("migrate_cleanup", iid))
        if iid in self.running and self.outgoing.get(iid) != "completed":
            raise WrongState(f"instance {iid} runs on this node: refusing to remove it")
        self.outgoing.pop(iid, None)
        await self.instance_destroy(iid, tap)
        for vid in volumes or []:
            self.volumes.pop(vid, None)

    # test helpers: make things happen behind the controller's back
    def crash(self, iid: str, reason: str = "crashed") -> None:
        self.running.pop(iid, None)
        self.exits[iid] = ExitInfo(reason=reason, detail="killed by SIGKILL", time=time.time())
        self.event_log.append(
            "instance-exited", {"id": iid, "exit": self.exits[iid].model_dump(mode="json")}
        )

    # -- high availability: states only (the agent's is corral.node.replica_agent) ----------
    async def replica_serve(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> ReplicaServed:
        self.calls.append(("replica_serve", spec.id))
        self._network_here(spec)
        if spec.id in self.specs:
            raise WrongState(f"instance {spec.id} itself is on this node")
        self.replicas[spec.id] = spec
        return ReplicaServed(
            address=address, port=10809, exports={"root": f"replica-{spec.id}"}, pid=1
        )

    async def replica_mirror(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> ReplicaStatus:
        self.calls.append(("replica_mirror", iid))
        if iid not in self.running:
            raise WrongState(f"instance {iid} does not run on this node")
        self.mirrors[iid] = REPLICA_IN_SYNC
        return await self.replica_status(iid)

    async def replica_status(self, iid: str) -> ReplicaStatus:
        if iid not in self.running:
            return ReplicaStatus(state=REPLICA_DEGRADED, reason="the instance does not run here")
        state = self.mirrors.get(iid, "")
        if not state:
            return ReplicaStatus(state=REPLICA_DEGRADED, reason="replication is not started")
        return ReplicaStatus(state=state, percent=100.0 if state == REPLICA_IN_SYNC else 0.0)

    async def replica_stop(self, iid: str) -> None:
        self.mirrors.pop(iid, None)

    async def replica_drop(self, iid: str, volumes: list[str] | None = None) -> None:
        self.calls.append(("replica_drop", iid))
        self.replicas.pop(iid, None)

    async def replica_promote(self, spec: InstanceSpec) -> int:
        self.calls.append(("replica_promote", spec.id))
        if spec.id in self.running:
            return self.running[spec.id]
        if spec.id not in self.replicas:
            raise NotFound(f"no replica of {spec.id} is on this node", resource="instance")
        del self.replicas[spec.id]
        return await self.instance_start(spec)

    # -- cold moves: states only (the agent's is corral.node.evacuate_agent) ----------------
    async def evacuate_receive(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> ReplicaServed:
        self.calls.append(("evacuate_receive", spec.id))
        self._network_here(spec)
        if spec.id in self.running:
            raise WrongState(f"instance {spec.id} runs on this node")
        self.specs.pop(spec.id, None)  # a stale copy is removed first
        self.arriving[spec.id] = spec
        nodes = [spec.root_volume or "root"] + [v.id for v in spec.volumes]
        return ReplicaServed(
            address=address, port=10810, exports={n: f"arriving-{n}" for n in nodes}, pid=1
        )

    async def evacuate_send(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> list[str]:
        self.calls.append(("evacuate_send", iid))
        if iid in self.running:
            raise WrongState(f"instance {iid} runs on this node: only a stopped one moves cold")
        if iid not in self.specs:
            raise NotFound(f"disk root of {iid} is not on this node", resource="instance")
        if iid in self.fail_send:
            raise EnvironmentProblem(f"disk root of {iid} differs from the destination")
        return [d.node for d in disks]

    async def evacuate_accept(self, spec: InstanceSpec) -> None:
        self.calls.append(("evacuate_accept", spec.id))
        if spec.id not in self.arriving and spec.id not in self.specs:
            raise NotFound(f"no copy of {spec.id} arrived on this node", resource="instance")
        self.arriving.pop(spec.id, None)
        self.specs[spec.id] = spec
        for v in spec.volumes:
            self.volumes[v.id] = 1

    async def evacuate_abort(
        self, iid: str, tap: str | None = None, volumes: list[str] | None = None
    ) -> None:
        self.calls.append(("evacuate_abort", iid))
        if iid in self.running:
            raise WrongState(f"instance {iid} runs on this node: refusing to remove it")
        self.arriving.pop(iid, None)
        self.specs.pop(iid, None)
        for vid in volumes or []:
            self.volumes.pop(vid, None)
