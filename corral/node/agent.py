"""The node agent: runs instances on this host as the controller asks, and reports what really
runs. Everything it does is idempotent, so the controller may repeat any call after a crash.

The controller reaches it only over the wire (``corral.node.wire``): the agent's server runs
these methods, and what happens on the node (a QEMU exits) goes to its event log, which the
controller follows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import psutil

from corral.config import Settings
from corral.errors import CorralError, EnvironmentProblem, Invalid, NotFound, WrongState
from corral.fsutil import atomic_write, pid_alive, proc_cmdline
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.node import credits, fence, image_pull, stats
from corral.node.driver import cgroups, confine, hotplug, jail, probe, qemu
from corral.node.driver.machine import Machine, find_pid, read_exit
from corral.node.driver.qmp import own_socket
from corral.node.evacuate_agent import EvacuateAgent
from corral.node.events import EventLog
from corral.node.imds import MetadataService
from corral.node.net import (
    dnsmasq,
    firewall,
    links,
    netns,
    nft,
    overlay,
    publicdns,
    reach,
    router,
    shaping,
    uplink,
)
from corral.node.spec import (
    Accel,
    Bucket,
    Confinement,
    CreditStatus,
    EventBatch,
    ExitInfo,
    HealthCheck,
    HostRecord,
    InstanceMetadata,
    InstanceSpec,
    NetworkSpec,
    NodeInfo,
    NodeStats,
    ObservedInstance,
    OverlaySpec,
    PolicySpec,
    PortSpec,
    RouterSpec,
)
from corral.node.storage import overlays, volumes
from corral.proc import arun

log = logging.getLogger(__name__)

METADATA_ADDRESS = "169.254.169.254"
ROOT_DISK = "root-disk"  # the root disk's virtio-blk device id (driver/qemu.py)
PORT_TIMEOUT = 4.0  # seconds to connect to a guest's port (well inside every stream's handshake)
MEMORY_OVERHEAD = 256 << 20  # QEMU's own memory above the guest's, in the instance's cgroup


def qemu_arch(binary: str) -> str:
    """The guest architecture a QEMU binary runs: ``qemu-system-x86_64`` -> ``x86_64``."""
    name = os.path.basename(binary)
    return name.removeprefix("qemu-system-") if name.startswith("qemu-system-") else "x86_64"


def check_host(settings: Settings) -> None:
    """Refuse to start without what a node needs, saying how to get it."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "Corral's daemon must run as root (it creates network namespaces, taps and cgroups); "
            "run it with sudo"
        )
    qemu.configure(settings.qemu)
    qemu.binary()
    for binary, package in (
        ("ip", "iproute2"),
        ("qemu-img", "qemu-utils"),
        ("dnsmasq", "dnsmasq-base"),
    ):
        from corral.proc import need

        need(binary, package)
    if not os.path.exists("/dev/net/tun"):
        raise EnvironmentProblem("/dev/net/tun is missing; load the tun module (modprobe tun)")
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        probe_file = settings.state_dir / ".write-test"
        probe_file.write_text("")
        probe_file.unlink()
    except OSError as err:
        raise EnvironmentProblem(
            f"state directory {settings.state_dir} is not writable ({err.strerror}); "
            "choose another with --state-dir or fix its permissions"
        ) from err


class NodeAgent(EvacuateAgent):
    memory_overhead = MEMORY_OVERHEAD

    def __init__(self, settings: Settings, serve_metadata: bool = False) -> None:
        self.settings = settings
        # a joined node answers its guests' metadata itself, from pushed documents (the
        # all-in-one's daemon answers from its database)
        self.imds = MetadataService(
            settings.state_dir / "networks", settings.state_dir / "metadata.key", serve_metadata
        )
        self.boot = os.urandom(4).hex()  # a new one each start: the controller sees restarts
        self.event_log = EventLog(settings.state_dir / "events.jsonl", settings.hostname)
        qemu.configure(settings.qemu)
        self.images = ImageStore(settings.images_dir)
        self.machines: dict[str, Machine] = {}
        self.dnsmasqs: dict[str, dnsmasq.Dnsmasq] = {}
        self.run_root = Path("/run/corral") / settings.namespace
        self.cgroup_parent = f"corral/{settings.namespace}"
        self._locks: dict[str, asyncio.Lock] = {}
        self._accel: Accel | None = None
        self._accel_lock = asyncio.Lock()
        self._accel_last: Accel | None = None  # the newest verdict, final or not
        self._probe_task: asyncio.Task[None] | None = None
        self._public: dict[str, dict[str, str]] = {}  # network -> elastic IP -> private
        # tap -> the caps applied (to the guest, from the guest)
        self._rates: dict[str, tuple[Bucket | None, Bucket | None]] = {}
        self._policies: dict[str, PolicySpec] = {}  # network -> the policy last applied
        self._policy_lock = asyncio.Lock()
        self.public_dns = publicdns.PublicDns(settings)
        self._incoming = {}  # live migrations coming here (corral.node.migrate_agent)
        self._outgoing = {}  # and leaving from here
        self.credits = credits.Governor(lambda iid: self.paths(iid).dir, self._cgroup)
        self._credits_task: asyncio.Task[None] | None = None
        # self-fencing (issue 16, node/fence.py): the lease, the guard, the HA QEMUs
        self.fence = fence.Fence(settings.state_dir, self._ha_pids, self._fence_kill)

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        for d in (self.settings.instances_dir, self.run_root, self.settings.state_dir / "networks"):
            d.mkdir(parents=True, exist_ok=True)
        self.images.ensure()
        await self.adopt()
        await self.imds.start()
        self.accel_now()  # the probe may boot a guest for seconds: start it in the background
        self._credits_task = asyncio.create_task(self._credits_loop(), name="cpu-credits")
        self.fence.start(self.settings.fence_watchdog)

    async def adopt(self) -> list[str]:
        """Take back every QEMU of ours that still runs (after an agent restart)."""
        adopted = []
        for d in sorted(self.settings.instances_dir.iterdir()):
            iid = d.name
            if iid in self.machines or not (d / "spec.json").exists():
                continue
            paths = self.paths(iid)
            pid = find_pid(paths)
            if pid is None:
                continue
            self.machines[iid] = await Machine.adopt(
                iid, pid, paths, self._cgroup(iid), self._exit_handler
            )
            adopted.append(iid)
            log.info("adopted %s (pid %d)", iid, pid)
        return adopted

    async def close(self) -> None:
        """Let go of everything without stopping instances."""
        await self.fence.close()
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self._credits_task is not None:
            self._credits_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._credits_task
        for m in list(self.machines.values()):
            await m.detach()
        self.machines.clear()
        await self.imds.close()

    def paths(self, iid: str) -> qemu.Paths:
        return qemu.Paths(dir=self.settings.instances_dir / iid, run=self.run_root / iid)

    def _cgroup(self, iid: str) -> cgroups.Group:
        return cgroups.Group(self.cgroup_parent, iid)

    def _lock(self, iid: str) -> asyncio.Lock:
        return self._locks.setdefault(iid, asyncio.Lock())

    async def _exit_handler(self, iid: str, info: ExitInfo) -> None:
        m = self.machines.get(iid)
        if m is not None and not m.running:
            self.machines.pop(iid, None)
        self.event_log.append("instance-exited", {"id": iid, "exit": info.model_dump(mode="json")})

    async def stats(self) -> NodeStats:
        """Counters of the node and its running instances (operator views)."""
        return await stats.read(
            self.machines,
            self._spec,
            self._cgroup,
            self.settings.namespace,
            surplus_of=self.credits.surplus,
        )

    async def events(self, after: int = 0, epoch: str = "", wait: float = 0.0) -> EventBatch:
        """What happened here after event ``after`` of ``epoch`` (long poll: ``wait``)."""
        return await self.event_log.read(after, epoch, wait)

    # -- facts -----------------------------------------------------------------------------
    async def accel(self) -> Accel:
        async with self._accel_lock:
            if self._accel is None or (not self._accel.probed and self.settings.accel == "auto"):
                kernel, initrd = self._probe_kernel()
                verdict = await probe.probe(
                    self.settings.accel, self.settings.state_dir / "accel.json", kernel, initrd
                )
                if kernel is None and verdict.accel == "tcg" and self.settings.accel == "auto":
                    return verdict  # not cached: probe again once an image exists
                self._accel = verdict
            return self._accel

    def _accel_final(self) -> bool:
        return self._accel is not None and (self._accel.probed or self.settings.accel != "auto")

    def accel_now(self) -> Accel:
        """The verdict without waiting, for answers to requests: the final one once known;
        until then the probe runs in the background (started here) and this says "probing"
        (or the last interim verdict, e.g. "no image to probe with yet")."""
        if self._accel_final():
            assert self._accel is not None
            return self._accel
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe_background(), name="accel-probe")
            if self._accel_last is not None:
                return self._accel_last
        return Accel(
            accel="probing",
            reason="the accelerator probe is running (a small guest boots under KVM to see "
            "whether KVM works here); ask again in a few seconds",
        )

    async def _probe_background(self) -> None:
        try:
            self._accel_last = await self.accel()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the accelerator probe failed")

    def _probe_kernel(self) -> tuple[Path | None, Path | None]:
        for m in self.images.list():
            if m.kind == "busybox" and m.kernel and m.initrd:
                return self.images.kernel_path(m), self.images.initrd_path(m)
        return None, None

    # -- images pulled on first use (corral.node.image_pull) ---------------------------------
    async def image_missing(self, manifests: list[str], blobs: list[str]) -> list[str]:
        return image_pull.missing(self.images, manifests, blobs)

    async def image_blob_put(
        self, sha256: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await image_pull.receive_blob(self.images, sha256)

    async def image_manifest_put(self, digest: str, manifest: str) -> None:
        await asyncio.to_thread(image_pull.put_manifest, self.images, digest, manifest)

    async def heartbeat(
        self,
        session: str = "",
        seq: int = 0,
        confirmed: int = 0,
        fence_after: float = 0.0,
        peers: list[str] | None = None,
    ) -> str:
        """Answered at once: the controller's heartbeat, which renews this node's lease
        (node/fence.py): the node's name and this agent's start (a restart changes it)."""
        self.fence.heartbeat(session, seq, confirmed, fence_after, list(peers or []))
        return f"{self.settings.hostname} {self.boot}"

    async def peer_heard(self, addresses: list[str]) -> list[float | None]:
        """Seconds since each agent at ``addresses`` last said hello here (None: never). The
        controller asks before it declares a node dead: a node a peer heard from lately may
        still hold its HA instances (node/fence.py)."""
        return [self.fence.heard_ago(a) for a in addresses]

    def _ha_pids(self) -> dict[str, int]:
        out = {}
        for iid, m in list(self.machines.items()):
            if m.running and m.pid is not None:
                spec = self._spec(iid)
                if spec is not None and spec.ha:
                    out[iid] = m.pid
        return out

    async def _fence_kill(self, iid: str) -> None:
        m = self.machines.get(iid)
        if m is not None and m.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.pid, signal.SIGKILL)  # at once: the reaper records the exit
        self.event_log.append("instance-fenced", {"id": iid})

    def _check_spec(self, spec: InstanceSpec) -> None:
        """A stale spec (older generation than the one held) is refused; an HA instance does
        not start while this node's lease has lapsed (it may be running elsewhere by now)."""
        held = self._spec(spec.id)
        fence.check_generation(spec.id, held.generation if held else 0, spec.generation)
        if spec.ha and not self.fence.valid():
            raise WrongState(
                f"instance {spec.id}: this node's lease has lapsed (the controller has not "
                "renewed it), so it starts no HA instance; it may run elsewhere by now",
                resource="instance",
                reason="lease-lapsed",
            )

    async def info(self) -> NodeInfo:
        accel = self.accel_now()  # never waits for the probe: info answers requests
        limits = cgroups.confinement()
        cg = limits["cgroup"]
        dnsmasq_path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin") or ""
        nft_path = shutil.which("nft") or shutil.which("nft", path="/usr/sbin") or ""
        return NodeInfo(
            name=self.settings.hostname,
            cpus=os.cpu_count() or 1,
            memory=psutil.virtual_memory().total,
            qemu=qemu.binary(),
            qemu_version=qemu.version(),
            accel=accel,
            namespace=self.settings.namespace if netns.exists(self.settings.namespace) else "",
            cgroup=cg,
            dnsmasq=dnsmasq_path,
            nft=nft_path,
            facts={
                "kernel": os.uname().release,
                "qemu_user": f"one uid per instance from {jail.UID_BASE} (no /etc/passwd entry)",
                "qemu_sandbox": jail.SANDBOX,
                "qemu_jail": "private mount namespace, tmpfs root: /usr read-only, its kernel, "
                "initrd, console log and sockets; disks and tap as open descriptors",
                "qemu_devices": limits["devices"],
                "qemu_block_io": limits["block_io"],
                "migration_address": self.settings.migration_address,
            },
            arch=qemu_arch(qemu.binary()),
            disk=shutil.disk_usage(self.settings.state_dir).total,
            memory_overhead=MEMORY_OVERHEAD,
            memory_reserved=self.settings.reserved_memory_mib << 20,
            zone=self.settings.availability_zone,
            netns=self.settings.namespace,
            metadata=self.imds.serve,
        )

    # -- networks --------------------------------------------------------------------------
    def _dnsmasq(self, spec: NetworkSpec) -> dnsmasq.Dnsmasq:
        dm = self.dnsmasqs.get(spec.id)
        if dm is None:
            dm = dnsmasq.Dnsmasq(
                namespace=spec.namespace,
                bridge=spec.bridge,
                cidr=spec.cidr,
                gateway=spec.gateway,
                domain=spec.domain,
                directory=self.settings.state_dir / "networks" / spec.id,
            )
            self.dnsmasqs[spec.id] = dm
        dm.mtu = spec.mtu
        return dm

    async def network_ensure(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None:
        """Namespace, bridge with the gateway address, metadata address, dnsmasq with hosts."""
        import ipaddress

        await netns.ensure(spec.namespace)
        await self._kernel_switches(spec.namespace)
        prefix = ipaddress.ip_network(spec.cidr).prefixlen
        # the gateway's MAC is the same on every node (a distributed gateway, issue 12): a
        # guest keeps its neighbour entry wherever the subnet's segment reaches
        await links.ensure_bridge(
            spec.namespace,
            spec.bridge,
            f"{spec.gateway}/{prefix}",
            mac=overlay.gateway_mac(spec.gateway),
        )
        await links.ensure_address(spec.namespace, "lo", f"{METADATA_ADDRESS}/32")
        await self._dnsmasq(spec).ensure(_entries(hosts))
        await self.imds.listen(spec)

    async def metadata_put(self, network: NetworkSpec, documents: list[InstanceMetadata]) -> None:
        """What the metadata service answers on ``network`` from now on (node/imds.py)."""
        await self.imds.put(network, documents)

    async def _kernel_switches(self, ns: str) -> None:
        """Forwarding on, and bridged IPv4 through the inet hooks (where conntrack works)."""
        if not os.path.exists("/proc/sys/net/bridge"):
            await arun(["modprobe", "br_netfilter"], check=False)
        if not os.path.exists("/proc/sys/net/bridge"):
            raise EnvironmentProblem(
                "the br_netfilter kernel module is not loaded and could not "
                "be loaded; run `modprobe br_netfilter`"
            )
        await arun(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=1",
            ]
        )

    async def network_policy(self, policy: PolicySpec) -> None:
        """Make the kernel enforce ``policy``: anti-spoofing, security groups, NAT, elastic IPs
        and bandwidth caps. Idempotent; the rule set is replaced in one nft transaction."""
        ns = policy.network.namespace
        async with self._policy_lock:
            if policy.uplink is not None:
                await uplink.ensure(ns, policy.uplink)
            await nft.apply(ns, firewall.document(policy))
            mapping = {p.public_ip: p.address for p in policy.ports if p.public_ip}
            if policy.uplink is not None:
                await uplink.set_public_addresses(ns, policy.uplink, set(mapping))
                if not policy.network.vpc:
                    await uplink.set_routed(ns, policy.routed)
            # an address routed into a VPC's namespace counts as mapped there (moved: forgotten)
            mapping |= {r.public_ip: f"{r.namespace}/{r.via}" for r in policy.routed}
            before = self._public.get(policy.network.id)
            if before is None:  # after a restart: assume every mapping may be new
                before = {ip: "" for ip in mapping}
            moved = {ip for ip in set(before) | set(mapping) if before.get(ip) != mapping.get(ip)}
            if moved:
                await uplink.flush_flows(ns, moved)
            # one rule set for every network of the namespace (a VPC's subnets there)
            for net in policy.networks:
                self._public[net.id] = mapping
                self._policies[net.id] = policy
            present = await links.link_names(ns)
            for port in policy.ports:
                if port.tap in present:
                    await self._shape(ns, port)

    async def _shape(self, ns: str, port: PortSpec) -> None:
        caps = shaping.buckets(port)
        if self._rates.get(port.tap) != caps:
            await shaping.apply(ns, port.tap, *caps)
            self._rates[port.tap] = caps

    async def dns_update(self, put: dict[str, str], remove: list[str]) -> None:
        """Public DNS: remove names first (an address may be moving), then set the others."""
        for name in remove:
            await self.public_dns.remove(name)
        for name, address in put.items():
            await self.public_dns.set(name, address)

    async def overlay_ensure(self, spec: OverlaySpec) -> None:
        """A subnet's segment here, joined to its other nodes over VXLAN (net/overlay.py)."""
        await overlay.ensure_spec(spec)

    async def router_ensure(self, spec: RouterSpec) -> None:
        """A VPC's router in its namespace here: routes between its subnets and, over a link
        of its own, to its instances on other nodes (net/router.py)."""
        if not netns.exists(spec.namespace):
            raise NotFound(
                f"namespace {spec.namespace} is not on this node yet: push its VPC's network "
                "first (the next reconcile pass does)",
                resource="network",
            )
        await router.ensure(spec)

    async def overlay_remove(self, namespace: str, vni: int) -> None:
        if netns.exists(namespace):  # a VPC's namespace may have gone with its last instance
            await overlay.remove(namespace, vni)

    async def network_hosts(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None:
        await self._dnsmasq(spec).update_hosts(_entries(hosts))

    async def network_remove(self, spec: NetworkSpec) -> None:
        await self.imds.forget(spec.id)
        await self._dnsmasq(spec).stop()
        self.dnsmasqs.pop(spec.id, None)
        if netns.exists(spec.namespace):
            await links.delete_link(spec.namespace, spec.bridge)
        self._policies.pop(spec.id, None)
        self._public.pop(spec.id, None)
        if spec.vpc:  # a VPC's own namespace goes with its network (its uplink veth too)
            await netns.delete(spec.namespace)

    async def teardown(self) -> None:
        """Remove this node's namespace and everything in it (instances must be gone)."""
        await self.imds.close()
        await self.replicas_stop_all()
        await self.arrivals_stop_all()
        vpc_namespaces = {n.namespace for n in self.imds.networks.values() if n.vpc}
        vpc_namespaces |= {d.namespace for d in self.dnsmasqs.values()}
        for dm in list(self.dnsmasqs.values()):
            await dm.stop()
        self.dnsmasqs.clear()
        for d in (self.settings.state_dir / "networks").glob("*"):
            pidfile = d / "dnsmasq.pid"
            with contextlib.suppress(ValueError, FileNotFoundError, ProcessLookupError):
                pid = int(pidfile.read_text())
                if pid_alive(pid) and f"--pid-file={pidfile}" in proc_cmdline(pid):
                    os.kill(pid, 15)
        await netns.delete(self.settings.namespace)
        for ns in sorted(vpc_namespaces - {self.settings.namespace}):
            await netns.delete(ns)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.run_root)
        cgroups.Group("corral", self.settings.namespace).remove()

    # -- instances -------------------------------------------------------------------------
    async def instance_create(self, spec: InstanceSpec) -> None:
        """Disk, tap and spec file (idempotent)."""
        self._check_spec(spec)
        manifest = self.images.get_manifest(spec.image)
        paths = self.paths(spec.id)
        if spec.root_volume is not None:  # EBS-style: the controller made the root volume
            if not self._volume(spec.root_volume).exists():
                raise NotFound(
                    f"the root volume {spec.root_volume} of {spec.id} is not on this node",
                    resource="volume",
                )
        else:
            overlays.check_size(spec.disk_size, manifest.root_disk.virtual_size or 0)
        paths.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(paths.spec, spec.model_dump_json(indent=2))
        if spec.root_volume is None:
            await overlays.create(
                paths.disk,
                self.images.root_disk_path(manifest),
                manifest.root_disk.format,
                spec.disk_size,
            )
        await links.ensure_tap(spec.network.namespace, spec.tap, spec.network.bridge)
        # under the policy's lock: a policy arriving now shapes this tap too, and two shapings
        # at once both made the tap's ifb (the second launch failed: "File exists")
        async with self._policy_lock:
            policy = self._policies.get(spec.network.id)
            port = next((p for p in policy.ports if p.tap == spec.tap), None) if policy else None
            if port is not None:  # the policy came before the tap: cap it now
                await self._shape(spec.network.namespace, port)

    async def _launch(
        self, spec: InstanceSpec, manifest: Manifest, root: Path, extra: tuple[str, ...] = ()
    ) -> Machine:
        """Start the instance's QEMU, confined, in its cgroup with its limits (``extra``: more
        QEMU arguments, e.g. a migration's ``-incoming defer``); the one launch path."""
        paths = self.paths(spec.id)
        accel = await self.accel()
        kernel = self.images.kernel_path(manifest)
        initrd = self.images.initrd_path(manifest)
        qemu_argv, fds = qemu.argv(
            spec,
            paths,
            accel=accel.accel,
            machine=self.settings.machine,
            kernel=kernel,
            initrd=initrd,
            cmdline=manifest.cmdline,
            root=qemu.Chain(await overlays.chain(root)),
            volume_dir=self.volume_dir,
        )
        argv = await asyncio.to_thread(
            confine.plan,
            self.settings.instances_dir,
            spec,
            paths,
            [*qemu_argv, *extra],
            fds,
            accel.accel,
            [kernel, initrd],
        )
        limits = cgroups.Limits(
            cpu=spec.cpu_limit or float(spec.cpus),
            memory=spec.memory + MEMORY_OVERHEAD,
            cpu_baseline=spec.cpu_baseline,
            io_weight=spec.io_weight or cgroups.IO_WEIGHT,
        )
        self.credits.forget(spec.id)  # its terms may have changed; the balance is kept
        m = await Machine.launch(
            spec.id,
            argv,
            paths,
            namespace=spec.network.namespace,
            cgroup=self._cgroup(spec.id),
            limits=limits,
            on_exit=self._exit_handler,
        )
        self.machines[spec.id] = m
        return m

    async def instance_start(self, spec: InstanceSpec) -> int:
        async with self._lock(spec.id):
            m = self.machines.get(spec.id)
            self._check_spec(spec)
            if m is not None and m.running:
                assert m.pid is not None
                return m.pid
            await self.instance_create(spec)
            paths = self.paths(spec.id)
            if (pid := find_pid(paths)) is not None:
                m = await Machine.adopt(
                    spec.id, pid, paths, self._cgroup(spec.id), self._exit_handler
                )
                self.machines[spec.id] = m
                return pid
            manifest = self.images.get_manifest(spec.image)
            root = paths.disk
            if spec.root_volume is not None:  # EBS-style: the root is a volume
                root = self._volume(spec.root_volume)
            m = await self._launch(spec, manifest, root)
            assert m.pid is not None
            if m.qmp is not None and spec.root_io is not None:  # its type's root disk limits
                io = spec.root_io
                try:
                    await hotplug.throttle_device(
                        m.qmp,
                        ROOT_DISK,
                        io.iops,
                        io.bps,
                        io.iops_burst,
                        io.bps_burst,
                        io.burst_seconds,
                    )
                except CorralError as err:  # never run it unlimited: stop it, say why
                    await m.stop(0, force=True)
                    self.machines.pop(spec.id, None)
                    raise EnvironmentProblem(
                        f"instance {spec.id}: QEMU refused the root disk's IO limits "
                        f"({err.message}); it was stopped"
                    ) from err
            if m.qmp is not None:  # the volumes' IO limits (controller/volume_io.py)
                for vol in spec.volumes:
                    if not (vol.iops or vol.bps):
                        continue
                    try:
                        await hotplug.throttle(m.qmp, vol.id, vol.iops, vol.iops_burst, vol.bps)
                    except CorralError as err:  # never run it unlimited: stop it, say why
                        await m.stop(0, force=True)
                        self.machines.pop(spec.id, None)
                        raise EnvironmentProblem(
                            f"instance {spec.id}: QEMU refused the IO limits of volume "
                            f"{vol.id} ({err.message}); it was stopped"
                        ) from err
            self.event_log.append("instance-started", {"id": spec.id, "pid": m.pid})
            return m.pid

    async def instance_stop(self, iid: str, timeout: float, force: bool = False) -> ExitInfo | None:
        async with self._lock(iid):
            m = self.machines.get(iid)
            if m is None or not m.running:
                pid = find_pid(self.paths(iid))
                if pid is None:
                    return read_exit(self.paths(iid))
                m = await Machine.adopt(
                    iid, pid, self.paths(iid), self._cgroup(iid), self._exit_handler
                )
                self.machines[iid] = m
            info = await m.stop(timeout, force)
            self.machines.pop(iid, None)
            return info

    # -- CPU credits (node/credits.py) ----------------------------------------------------
    async def _credits_loop(self) -> None:
        while True:
            await asyncio.sleep(credits.TICK)
            running = {iid: m.pid for iid, m in self.machines.items() if m.running}
            try:
                await asyncio.to_thread(self.credits.tick, running, time.monotonic())
            except Exception:
                log.exception("CPU credit accounting failed")

    async def instance_credits(self, iid: str, mode: str | None = None) -> CreditStatus | None:
        if mode is not None:
            return await asyncio.to_thread(self.credits.set_mode, iid, mode)
        return self.credits.status(iid)

    async def instance_reboot(self, iid: str, timeout: float) -> str:
        async with self._lock(iid):
            m = self.machines.get(iid)
            if m is None or not m.running:
                raise WrongState(f"instance {iid} is not running on this node", resource="instance")
            return await m.reboot(timeout)

    async def instance_destroy(self, iid: str, tap: str | None = None) -> None:
        """Stop (forcefully) and remove every trace: process, tap, disk, files, cgroup."""
        if self.machines.get(iid) or find_pid(self.paths(iid)):
            await self.instance_stop(iid, timeout=0, force=True)
        paths = self.paths(iid)
        if tap:
            held = self._spec(iid)  # its tap is in its network's namespace (a VPC's, issue 12)
            ns = held.network.namespace if held is not None else self.settings.namespace
            if netns.exists(ns):
                await shaping.remove(ns, tap)
                await links.delete_link(ns, tap)
            self._rates.pop(tap, None)
        async with self._lock(iid):
            shutil.rmtree(paths.dir, ignore_errors=True)
            shutil.rmtree(paths.run, ignore_errors=True)
            with contextlib.suppress(OSError):
                paths.jail.rmdir()
            await asyncio.to_thread(self._cgroup(iid).remove)
        self._locks.pop(iid, None)

    async def instances(self) -> list[ObservedInstance]:
        out: list[ObservedInstance] = []
        known: set[str] = set()
        for d in sorted(self.settings.instances_dir.glob("*")):
            if not (d / "spec.json").exists():
                continue
            iid = d.name
            known.add(iid)
            paths = self.paths(iid)
            m = self.machines.get(iid)
            held = self._spec(iid)
            gen = held.generation if held is not None else 0
            if m is not None and m.running:
                out.append(
                    ObservedInstance(
                        id=iid,
                        running=True,
                        pid=m.pid,
                        status=await m.status(),
                        generation=gen,
                        adopted=m.adopted,
                    )
                )
                continue
            pid = find_pid(paths)
            out.append(
                ObservedInstance(
                    id=iid,
                    running=pid is not None,
                    pid=pid,
                    status="unwatched" if pid else "",
                    exit=None if pid else read_exit(paths),
                    generation=gen,
                )
            )
        out.extend(self._strays(known))
        return out

    def _strays(self, known: set[str]) -> list[ObservedInstance]:
        marker = f"unix:{self.run_root}/"
        strays = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info.get("cmdline") or []
            for arg in cmd:
                if arg.startswith(marker) and arg.endswith("/qmp.sock,server=on,wait=off"):
                    iid = arg[len(marker) :].split("/")[0]
                    if iid not in known:
                        strays.append(
                            ObservedInstance(
                                id=iid,
                                running=True,
                                pid=proc.info["pid"],
                                status="stray",
                                spec=False,
                            )
                        )
        return strays

    async def kill_stray(self, iid: str, pid: int) -> None:
        cmd = proc_cmdline(pid)
        if any(a.startswith(f"unix:{self.run_root}/{iid}/") for a in cmd):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    async def instance_confinement(self, iid: str) -> Confinement | None:
        """How the instance's QEMU is confined, read from /proc; None when it does not run."""
        m = self.machines.get(iid)
        pid = m.pid if m is not None and m.running else find_pid(self.paths(iid))
        if pid is None:
            return None
        return await asyncio.to_thread(confine.observe, pid, self.paths(iid), self._cgroup(iid))

    # -- captured images -------------------------------------------------------------------
    async def image_capture(
        self,
        base_digest: str,
        name: str,
        version: str,
        description: str,
        instance_id: str | None = None,
        snapshot_id: str | None = None,
    ) -> str:
        """A new image with ``base_digest``'s kernel and initrd and a root disk flattened from
        an instance's disk or taken from a snapshot; returns its manifest digest. Without a
        base (``""``) the image has no kernel: it boots the disk's own boot loader by firmware,
        as an imported disk does."""
        base = self.images.get_manifest(base_digest) if base_digest else None
        if instance_id is not None:
            spec = self._spec(instance_id)
            source = self.paths(instance_id).disk
            if spec is not None and spec.root_volume is not None:
                source = self._volume(spec.root_volume)
        elif snapshot_id is not None:
            source = self._snapshot(snapshot_id)
        elif base is not None:
            source = self.images.root_disk_path(base)
        else:
            raise Invalid("capture what? give an instance, a snapshot or a base image")
        if not source.exists():
            raise NotFound(
                f"the disk to capture ({source}) is not on this node",
                resource="instance" if instance_id else "snapshot",
            )
        self.images.ensure()
        # never a name in a path: an image name may hold "/" and ".."
        flat = self.images.tmp / f"capture-{os.getpid()}-{uuid.uuid4().hex[:12]}.qcow2"
        flat.unlink(missing_ok=True)
        try:
            await volumes.flatten(source, flat)
            info = await overlays.info(flat)
            virtual = int(info.get("virtual-size", 0))  # type: ignore[call-overload]
            blob = await asyncio.to_thread(
                self.images.add_blob, flat, fmt="qcow2", virtual_size=virtual, move=True
            )
        finally:
            flat.unlink(missing_ok=True)
        if base is None:
            return self.images.put_manifest(
                Manifest(
                    name=name,
                    version=version,
                    kind="imported",
                    description=description,
                    root_disk=blob,
                    cmdline="",
                    min_disk=virtual,
                )
            )
        manifest = base.model_copy(
            update={
                "name": name,
                "version": version,
                "description": description,
                "root_disk": blob,
                "min_disk": virtual,
                "base": base_digest,
                "build_key": None,
            }
        )
        return self.images.put_manifest(manifest)

    async def image_delete(self, digest: str) -> None:
        await asyncio.to_thread(self.images.remove, digest)

    # -- consoles and access ---------------------------------------------------------------
    async def console_log(self, iid: str, tail: int = 65536) -> bytes:
        path = self.paths(iid).console_log
        if not path.exists():
            if not self.paths(iid).dir.exists():
                raise NotFound(f"instance {iid} has no files on this node", resource="instance")
            return b""
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if tail and size > tail:
                fh.seek(size - tail)
            return fh.read()

    async def console_connect(self, iid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        m = self.machines.get(iid)
        if m is None or not m.running:
            raise WrongState(
                f"instance {iid} is not running; start it to use its console", resource="instance"
            )
        try:
            own_socket(self.paths(iid).console)
            return await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.paths(iid).console)), 5
            )
        except (OSError, TimeoutError) as err:
            raise WrongState(
                f"the console of {iid} is not reachable: {err}", resource="instance"
            ) from err

    async def port_connect(
        self, iid: str, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP stream to ``address:port`` of a running instance, connected from inside the
        node's namespace. Nothing listens on the host for it: the caller (the API, for an
        authenticated client) carries the stream, and it ends when either side closes."""
        m = self.machines.get(iid)
        if m is None or not m.running:
            raise WrongState(
                f"instance {iid} is not running; start it to reach its ports", resource="instance"
            )
        # from inside the instance's network's namespace (a non-default VPC's own, issue 12)
        held = self._spec(iid)
        where = held.network.namespace if held is not None else self.settings.namespace
        sock = await asyncio.to_thread(netns.socket_in, where)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (address, port)), PORT_TIMEOUT
            )
            return await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as err:
            sock.close()
            why = err.strerror if isinstance(err, OSError) and err.strerror else "no answer"
            raise WrongState(
                f"port {port} of {iid} ({address}) does not answer ({why}); is the server "
                "in the guest up?",
                resource="instance",
            ) from err

    async def health_check(self, address: str, check: HealthCheck, namespace: str = "") -> str:
        """One attempt at ``check`` against ``address`` from the node's namespace, or from
        ``namespace``, one of its VPC namespaces (an instance of a non-default VPC's subnet):
        "" when the server answers, else what went wrong."""
        own = self.settings.namespace
        if namespace and not namespace.startswith(f"{own}-vpc-"):
            raise Invalid(
                f"namespace {namespace!r} is not one of this node's VPC namespaces "
                f"({own}-vpc-…); leave it empty for the node's own",
                field="namespace",
            )
        return await reach.check(namespace or own, address, check)

    async def instance_relink(self, iid: str, down: float = 0.3) -> bool:
        """Pull the instance's network cable and plug it back: a guest watching its link asks
        DHCP for its address again (after its address moved). False when it does not run."""
        m = self.machines.get(iid)
        if m is None or not m.running or m.qmp is None:
            return False
        await m.qmp.set_link("nic0", False)
        await asyncio.sleep(down)
        await m.qmp.set_link("nic0", True)
        return True

    async def address_moved(self, network: NetworkSpec, address: str) -> None:
        """``address`` now belongs to another MAC: forget the old link-layer entry."""
        await reach.forget_neighbour(network.namespace, network.bridge, address)

    async def ping(self, address: str, count: int = 1) -> bool:
        out = await arun(
            [
                "ip",
                "netns",
                "exec",
                self.settings.namespace,
                "ping",
                "-c",
                str(count),
                "-W",
                "1",
                address,
            ],
            check=False,
            timeout=count + 5,
        )
        return " 0% packet loss" in out


def _entries(hosts: list[HostRecord]) -> list[dnsmasq.HostEntry]:
    return [
        dnsmasq.HostEntry(
            mac=h.mac,
            address=h.address,
            names=tuple(h.names),
            hostname=h.hostname,
            zone=h.zone,
            dhcp=h.dhcp,
        )
        for h in hosts
    ]
