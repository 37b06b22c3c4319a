"""What the controller asks of a node: wire models shared by the agent and its clients."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from pydantic import BaseModel, Field


class NetworkSpec(BaseModel):
    id: str
    namespace: str
    bridge: str
    cidr: str
    gateway: str
    domain: str
    # the MTU DHCP gives guests (option 26); 0: none sent. A network whose subnet may span
    # nodes over VXLAN gets the underlay's less the 50-byte overhead (net/overlay.py)
    mtu: int = 0
    # a non-default VPC's own namespace (issue 12): its agent answers metadata from pushed
    # documents (the all-in-one's too), only the node's namespace may open flows into it over
    # its uplink, and the namespace goes when the network is removed
    vpc: bool = False


# where a VPC namespace's uplink meets its node's namespace (issue 12): a /30 per VPC network on
# a node, from link-local space (never routed off the node), its lower host the node's end
TRANSIT_CIDR = "169.254.0.0/16"


def transit_slot(n: int) -> str:
    """The ``n``-th transit /30 (0-based), skipping 169.254.0.0/24 and the metadata /24."""
    third, fourth = divmod(n, 64)
    third += 1 + (third >= 168)
    if third > 254:
        raise ValueError(f"transit slot {n}: the link-local range holds no more VPC networks")
    return f"169.254.{third}.{fourth * 4}/30"


def transit_ends(transit: str) -> tuple[str, str]:
    """(the node's end, the VPC namespace's end) of a transit /30: its first two hosts."""
    net = ipaddress.IPv4Network(transit)
    return str(net.network_address + 1), str(net.network_address + 2)


class HostRecord(BaseModel):
    mac: str
    address: str
    names: list[str]  # DNS names; the first is what a reverse lookup answers
    hostname: str = ""  # the guest's host name (the metadata service tells the guest)
    zone: str = ""  # the guest's DHCP domain, its search domain (its account's zone)
    # False: the instance runs on another node of the subnet's segment (issue 12): its name
    # resolves here, but its DHCP is its own node's
    dhcp: bool = True


class VolumeAttachment(BaseModel):
    """A volume the instance gets as an extra virtio disk, in attachment order."""

    id: str
    device: str  # the name the API gave (/dev/sdf …); the guest sees /dev/vdb, /dev/vdc …
    # QEMU block throttling of the disk (controller/volume_io.py); 0: none
    iops: int = 0
    iops_burst: int = 0
    bps: int = 0


class DiskIo(BaseModel):
    """QEMU block throttling of a disk (guest-visible, as a slower disk): sustained IOPS and
    bytes a second, and what a burst may reach for ``burst_seconds``; 0: none."""

    iops: int = 0
    bps: int = 0
    iops_burst: int = 0
    bps_burst: int = 0
    burst_seconds: int = 0


class InstanceSpec(BaseModel):
    id: str
    name: str
    image: str  # manifest digest in the node's image store
    cpus: int = 1
    cpu_limit: float = 0.0  # cores; 0 means as many as vcpus
    memory: int  # bytes
    disk_size: int  # bytes
    mac: str
    address: str | None = None
    network: NetworkSpec
    tap: str
    cmdline_extra: str = ""
    volumes: list[VolumeAttachment] = Field(default_factory=list)
    root_volume: str | None = None  # EBS-style: the root disk is this volume, not an overlay
    # CPU credits (node/credits.py): a baseline below the ceiling (cpu_limit) makes the
    # instance burstable; 0 = no credits, the ceiling always
    cpu_baseline: float = 0.0  # cores
    root_io: DiskIo | None = None  # the root disk's limits (its instance type's); None: none
    io_weight: int = 0  # its cgroup's block IO weight on the host; 0: the default (100)
    cpu_credit_mode: str = "standard"  # standard | unlimited
    cpu_credit_max: float = 0.0  # core-seconds the balance holds at most
    # failure handling (issue 16, node/fence.py): an HA instance is killed by its node's fence
    # when the node loses its lease; the generation grows when the instance moves or fails
    # over, and the agent refuses a spec older than the one it holds (0: not checked)
    ha: bool = False
    generation: int = 0


class HealthCheck(BaseModel):
    """How to tell that a server answers: a TCP connection to ``port``, or with ``path`` an
    HTTP GET answered with a status below 400."""

    port: int = Field(22, ge=1, le=65535)
    path: str | None = None
    timeout: float = 2.0  # per attempt


class ExitInfo(BaseModel):
    reason: str  # requested | guest-shutdown | crashed | unknown
    detail: str = ""
    time: float = 0.0


class ObservedInstance(BaseModel):
    id: str
    running: bool
    pid: int | None = None
    status: str = ""  # QEMU's run state when running (running, paused, shutdown …)
    exit: ExitInfo | None = None
    spec: bool = True  # False: a QEMU of ours with no instance directory (a stray)
    generation: int = 0  # the generation of the spec the node holds (node/fence.py)
    # its QEMU was taken over by this agent after a restart (not its child): no live migration
    # out of it (QEMU_ADOPTED)
    adopted: bool = False


class Accel(BaseModel):
    accel: str  # kvm | tcg
    reason: str
    probed: bool = False
    seconds: float | None = None


class NodeInfo(BaseModel):
    name: str
    cpus: int
    memory: int
    qemu: str
    qemu_version: str
    accel: Accel
    namespace: str
    cgroup: str
    dnsmasq: str
    nft: str
    facts: dict[str, str] = Field(default_factory=dict)
    # what the scheduler needs (0 / "" = unknown: the filter lets the node pass)
    arch: str = "x86_64"  # the guest architecture its QEMU runs
    disk: int = 0  # bytes of the file system holding instance disks
    memory_overhead: int = 0  # QEMU's own memory per instance above the guest's
    memory_reserved: int = 0  # memory kept for the host itself
    zone: str = ""  # its availability zone
    netns: str = ""  # the namespace its networks live in (its own setting, made or not)
    # it answers the metadata service itself, from the documents the controller pushes
    # (``metadata_put``): a node joined to a cluster; the all-in-one's daemon answers its own
    metadata: bool = False


class RuleSpec(BaseModel):
    """One allow rule of a security group, resolved for the node."""

    protocol: str = "all"  # tcp | udp | icmp | all | an IP protocol number
    from_port: int | None = None  # tcp/udp: first port; icmp: type (-1 or None: any)
    to_port: int | None = None  # tcp/udp: last port; icmp: code (-1 or None: any)
    cidrs: list[str] = Field(default_factory=list)  # peers by address
    groups: list[str] = Field(default_factory=list)  # peers by security group membership


class GroupSpec(BaseModel):
    id: str
    ingress: list[RuleSpec] = Field(default_factory=list)
    egress: list[RuleSpec] = Field(default_factory=list)


class Bucket(BaseModel):
    """A token bucket capping one direction of a port (node/net/shaping.py): ``rate_mbit``
    sustained, a bucket of ``burst_bytes`` that fills at that rate, spent at up to
    ``peak_mbit`` (None: the link's speed)."""

    rate_mbit: float
    burst_bytes: int
    peak_mbit: float | None = None


class PortSpec(BaseModel):
    """An instance's port on the network: what the kernel checks and filters it by."""

    instance_id: str
    tap: str
    mac: str
    address: str
    groups: list[str] = Field(default_factory=list)
    public_ip: str | None = None  # an elastic IP mapped 1:1 to ``address``
    rate_mbit: float | None = None  # bandwidth cap each way; None: unlimited
    # caps with a burst bucket per direction (the instance type's); either set: they win over
    # rate_mbit
    to_guest: Bucket | None = None
    from_guest: Bucket | None = None
    metadata_hop_limit: int = 1  # IP TTL of the metadata service's answers to IMDSv2 PUTs


class UplinkSpec(BaseModel):
    """The router side of a node's namespace: a veth to the outside world."""

    peer_netns: str | None = None  # the namespace standing for the outside (tests); None: host
    cidr: str  # the public network (elastic IPs come from it)
    address: str  # the node namespace's address on it
    gateway: str  # the outside router's address on it


class RemoteMember(BaseModel):
    """An instance of the same segment running on another node: its address counts as a
    member of its groups here (its own node enforces its egress and anti-spoofing)."""

    instance_id: str
    address: str
    groups: list[str] = Field(default_factory=list)


class RoutedPublic(BaseModel):
    """An elastic IP of an instance in a non-default VPC's namespace on this node (issue 12):
    the node's namespace answers ARP for it on its uplink and routes it, unchanged, over the
    VPC's transit veth; the VPC's namespace maps it 1:1 to the instance."""

    public_ip: str
    via: str  # the VPC namespace's end of its transit /30
    namespace: str  # the VPC's namespace (its transit veth here is uplink.peer_name of it)


class PolicySpec(BaseModel):
    """Everything the kernel enforces on one network, applied as one nft transaction."""

    network: NetworkSpec
    groups: list[GroupSpec] = Field(default_factory=list)
    ports: list[PortSpec] = Field(default_factory=list)
    uplink: UplinkSpec | None = None
    # the subnet spans nodes (issue 12): instances of the segment on other nodes (group
    # members for group-to-group rules), and the VXLAN devices joining this bridge to them
    remote: list[RemoteMember] = Field(default_factory=list)
    overlay_devs: list[str] = Field(default_factory=list)
    # a node's own network with an uplink: the elastic IPs it routes into its VPC namespaces
    routed: list[RoutedPublic] = Field(default_factory=list)
    # a VPC's namespace holding several of its subnets (issue 12): their networks beside
    # ``network``; the policy covers all of them (one rule set per namespace), and the
    # namespace routes between them
    siblings: list[NetworkSpec] = Field(default_factory=list)

    @property
    def networks(self) -> list[NetworkSpec]:
        """Every network of the namespace this policy covers."""
        return [self.network, *self.siblings]


class InstanceMetadata(BaseModel):
    """What the metadata service (169.254.169.254) answers one instance, made by the controller
    (controller/imds_docs.py) and served by the agent of a joined node (corral/imds.py)."""

    instance_id: str
    address: str  # its private address: the source of its requests names it
    tree: dict[str, Any]  # {"meta-data": …, "dynamic": …} in EC2's path layout
    user_data: str = ""  # base64 (it may be any bytes)
    endpoint: str = "enabled"  # enabled | disabled
    tokens: str = "optional"  # IMDSv2: optional | required


class Confinement(BaseModel):
    """How a running instance's QEMU is confined, as observed in /proc (not as intended)."""

    pid: int
    uid: int
    gid: int
    groups: list[int] = Field(default_factory=list)
    capabilities: str  # effective set, hex (0 is none)
    seccomp: str  # filter | strict | off
    no_new_privs: bool
    sandbox: str  # the -sandbox options QEMU runs with ("" when none)
    jail: str  # the jail's mount point on the host ("" when its root is the host's)
    own_mount_namespace: bool
    cgroup: str  # the instance's cgroup and the controllers it is in
    devices: str
    block_io: str


# -- the wire: what travels besides the specs above -------------------------------------------
# Reasons: finer, stable words within an error code that the controller may act on (exception
# classes never cross the wire; corral.errors codes and these reasons do).
GUEST_HOLDS_DISK = "guest-holds-disk"
LAUNCH_FAILED = "launch-failed"
NODE_UNREACHABLE = "node-unreachable"
NODE_TIMEOUT = "node-timeout"
# a migration's disk mirror did not end complete (its target failed, or it had ended by itself):
# the destination's disks lack writes, so it must not run the guest
MIRROR_INCOMPLETE = "mirror-incomplete"
# the source's QEMU was adopted by its agent after a restart (not launched by it): live
# migrations out of such a QEMU left guests with corrupt memory in testing, not yet explained
# (docs/SPEC.md, live migration under faults), so the agent refuses them; a stop and start
# gives the instance a QEMU its agent launched
QEMU_ADOPTED = "qemu-adopted"


class WireError(BaseModel):
    """An error as it crosses the wire: a ``corral.errors.Code``, an optional reason and the
    message for the user."""

    code: str
    message: str
    reason: str | None = None
    field: str | None = None
    resource: str | None = None


class Event(BaseModel):
    """One thing that happened on a node, numbered: ``seq`` grows by one per event within the
    node's event log (``epoch`` names the log, so a log started afresh is told apart)."""

    node: str
    seq: int
    kind: str  # instance-started | instance-exited
    time: float
    payload: dict[str, Any] = Field(default_factory=dict)


class EventBatch(BaseModel):
    epoch: str
    events: list[Event] = Field(default_factory=list)
    last: int = 0  # the newest seq in the log (0: none yet)
    gap: bool = False  # events after the asked seq were dropped or the epoch changed


# -- requests: one model per call, fields in the order of the NodeClient method's parameters --
class NoArgs(BaseModel):
    pass


class NetworkEnsureRequest(BaseModel):
    spec: NetworkSpec
    hosts: list[HostRecord]


class NetworkRemoveRequest(BaseModel):
    """A network no instance of the node uses any more (a VPC's: its namespace goes too)."""

    spec: NetworkSpec


VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def vxlan_device(vni: int) -> str:
    """The name of a segment's VXLAN device on a node (net/overlay.py)."""
    return f"vx{vni}"


def guest_mtu(underlay_mtu: int = 1500) -> int:
    """The MTU of a guest whose segment crosses the underlay in VXLAN."""
    return underlay_mtu - VXLAN_OVERHEAD


class OverlaySpec(BaseModel):
    """A subnet's segment on this node, joined to the other nodes hosting it by VXLAN
    (corral/node/net/overlay.py): ``entries`` maps each remote guest MAC to the underlay
    address of its node (``spread``: those moving, sent to every peer); ``peers`` are those
    nodes (broadcast is replicated to them only)."""

    namespace: str
    bridge: str = Field(max_length=15)
    vni: int = Field(ge=1, lt=1 << 24)
    local: str  # this node's underlay address
    underlay_namespace: str | None = None  # where the underlay is; None: the agent's own
    underlay_dev: str | None = None
    peers: list[str] = Field(default_factory=list)
    entries: dict[str, str] = Field(default_factory=dict)
    # remote guests being live-migrated: their frames go to every peer, as broadcast does
    # (the kernel takes only one destination per unicast MAC), so both their node and the one
    # they move to get them; the destination's tap holds them until its copy runs, and none
    # is lost in the pause
    spread: list[str] = Field(default_factory=list)


class OverlayRequest(BaseModel):
    spec: OverlaySpec


ROUTER_LINK_PREFIX = "vr-"  # a VPC router's link to its namespaces on other nodes


def router_mac(vpc_id: str, node_id: str) -> str:
    """A node's MAC on a VPC's router link: locally administered (02:), stable, and unique per
    (VPC, node) for any practical count of nodes (a hash)."""
    digest = hashlib.sha256(f"{vpc_id}/{node_id}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class RouterSpec(BaseModel):
    """A VPC's router in its namespace on this node (issue 12). The namespace routes between
    the VPC's subnets there by itself (a bridge each, with its gateway address); ``link``
    reaches the VPC's namespaces on other nodes: a VXLAN segment of its own (one VNI per VPC)
    on a bridge without an address, where each node has ``mac``. Every instance of the VPC
    running on another node has a /32 route over the link to its node's router MAC
    (``routes``), so a packet between two subnets is routed at the sender's node and at the
    receiver's, each on its own (a distributed router). ``cidr``: the VPC's, unreachable
    unless a subnet or a route says otherwise (never out of the uplink)."""

    namespace: str
    cidr: str
    mac: str
    link: OverlaySpec | None = None  # None: the VPC runs on this node only
    routes: dict[str, str] = Field(default_factory=dict)  # instance address -> router MAC


class RouterRequest(BaseModel):
    spec: RouterSpec


class OverlayRemoveRequest(BaseModel):
    namespace: str
    vni: int = Field(ge=1, lt=1 << 24)


class NetworkPolicyRequest(BaseModel):
    policy: PolicySpec


class MetadataPutRequest(BaseModel):
    network: NetworkSpec
    documents: list[InstanceMetadata]


class DnsUpdateRequest(BaseModel):
    put: dict[str, str]
    remove: list[str]


class InstanceSpecRequest(BaseModel):
    spec: InstanceSpec


class HeartbeatRequest(BaseModel):
    """The controller's heartbeat, which renews the node's lease (node/fence.py): ``seq``
    numbers this heartbeat within the controller's ``session``; ``confirmed`` is the heartbeat
    of that session whose renewal the database has recorded; the node may count on its lease
    for ``fence_after`` seconds from when that one reached it (0: no fencing, e.g. all-in-one);
    ``peers`` are the other nodes' agents (IP:PORT), probed before fencing."""

    session: str = ""
    seq: int = 0
    confirmed: int = 0
    fence_after: float = 0.0
    peers: list[str] = Field(default_factory=list)


# self-fencing's timings (node/fence.py), which the controller's death decision must agree with
PROBE_TIMEOUT = 1.0  # seconds for a hello to a peer to be answered
PROBE_SLACK = 1.5  # the guard's deadline past the fence deadline: time for the hellos
HANG_AFTER = 3.0  # while the controller is down: the guard fires if the agent stops this long
# a node a peer heard from less than this ago may still hold its HA QEMUs (its guard's deadline
# is at most HANG_AFTER past an answered hello, which took at most PROBE_TIMEOUT)
HEARD_WITHIN = HANG_AFTER + PROBE_TIMEOUT + PROBE_SLACK


class PeerHeardRequest(BaseModel):
    addresses: list[str]  # IP:PORT of other nodes' agents


class InstanceStopRequest(BaseModel):
    iid: str
    timeout: float
    force: bool = False


class InstanceRebootRequest(BaseModel):
    iid: str
    timeout: float


class InstanceDestroyRequest(BaseModel):
    iid: str
    tap: str | None = None


class InstanceRequest(BaseModel):
    iid: str


class ConsoleLogRequest(BaseModel):
    iid: str
    tail: int = 65536


class PortConnectRequest(BaseModel):
    iid: str
    address: str
    port: int = Field(ge=1, le=65535)


class VolumeCreateRequest(BaseModel):
    vid: str
    size: int
    snapshot_id: str | None = None
    image_digest: str | None = None
    fs: str | None = None
    label: str = ""


class VolumeRequest(BaseModel):
    vid: str


class VolumeAttachRequest(BaseModel):
    iid: str
    vid: str
    iops: int = 0  # block throttling of the disk (0: none), applied again on every call
    iops_burst: int = 0
    bps: int = 0


class VolumeDetachRequest(BaseModel):
    iid: str
    vid: str
    timeout: float = 20.0


class SnapshotCreateRequest(BaseModel):
    sid: str
    vid: str
    instance_id: str | None = None


class SnapshotRequest(BaseModel):
    sid: str


class ImageCaptureRequest(BaseModel):
    base_digest: str
    name: str
    version: str
    description: str
    instance_id: str | None = None
    snapshot_id: str | None = None


class ImageRequest(BaseModel):
    digest: str


class ImageMissingRequest(BaseModel):
    manifests: list[str] = Field(default_factory=list)  # manifest digests
    blobs: list[str] = Field(default_factory=list)  # sha256 of parts


class ImageBlobRequest(BaseModel):
    sha256: str


IMAGE_PART_KEPT = b"ok "  # image_blob_put's answer, then the sha256 (else "error: …")


class ImageManifestRequest(BaseModel):
    digest: str
    manifest: str  # the manifest's canonical JSON


class HealthCheckRequest(BaseModel):
    address: str
    check: HealthCheck
    # where to check from: one of the node's VPC namespaces (its instance's subnet); "": the
    # node's own
    namespace: str = ""


class InstanceRelinkRequest(BaseModel):
    iid: str
    down: float = 0.3


class AddressMovedRequest(BaseModel):
    network: NetworkSpec
    address: str


class PingRequest(BaseModel):
    address: str
    count: int = 1


class EventsRequest(BaseModel):
    after: int = 0  # the last seq the caller has seen
    epoch: str = ""  # the epoch that seq belongs to ("" at first)
    wait: float = Field(0.0, ge=0, le=300)  # long poll: seconds to wait for a new event


# -- stats (operator views, issue 15) ------------------------------------------------------------
class InstanceStats(BaseModel):
    """Counters of one running instance, read from its cgroup, QMP and tap. Counters only grow
    while the QEMU lives (rates are the reader's business); None: not readable here."""

    id: str
    cpu_seconds: float | None = None  # CPU time its QEMU used (cgroup), seconds
    cpu_limit: float = 0.0  # cores it may use (0: one per vCPU)
    vcpus: int = 1
    memory_bytes: int | None = None  # memory its QEMU holds now (cgroup)
    memory_limit: int = 0  # the guest's memory, bytes
    disk_read_bytes: int | None = None  # all its disks (QMP query-blockstats)
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = None  # what the guest received (its tap's tx)
    net_tx_bytes: int | None = None  # what the guest sent (its tap's rx)
    started_at: float | None = None  # the QEMU process's start (epoch seconds)
    # unlimited CPU credits: core-seconds used above the baseline with no credits left, kept
    # by this node across agent and QEMU restarts (node/credits.py); None: not burstable
    cpu_surplus_seconds: float | None = None


class NodeStats(BaseModel):
    time: float  # when read (epoch seconds)
    cpus: int
    cpu_seconds: float  # host CPU time spent busy (all cores, not idle/iowait)
    load1: float
    memory_total: int
    memory_available: int
    instances: list[InstanceStats] = Field(default_factory=list)


# -- live migration (corral.node.migrate_agent; the disk mirror is corral.node.driver.mirror) ---
MIGRATION_TIMEOUT = 600.0  # seconds a migration may take before it is cancelled
MIGRATION_TIMED_OUT = "migration-timed-out"


class MirrorDisk(BaseModel):
    """One disk to copy: the source's block node, the export it goes to, and how much of it."""

    node: str  # "root" or a volume id (the block node's name on both sides)
    export: str  # the destination's NBD export name (a random token)
    sync: str = Field("full", pattern="^(top|full)$")  # top: the overlay only


class MirrorProgress(BaseModel):
    node: str
    total: int = 0  # bytes the job knows it has to copy (grows as the guest writes)
    done: int = 0
    ready: bool = False
    status: str = ""  # QEMU's job status (running, ready, …)
    error: str = ""


class MemoryProgress(BaseModel):
    """What ``query-migrate`` says, in Corral's words."""

    status: str = "none"  # none, setup, active, device, completed, failed, cancelled, …
    percent: float = 0.0
    transferred: int = 0  # bytes sent so far
    remaining: int = 0  # bytes of memory still dirty
    total: int = 0  # the guest's memory
    dirty_rate: int = 0  # bytes per second the guest dirties
    mbps: float = 0.0  # the link's throughput as QEMU measures it
    iterations: int = 0  # passes over memory
    expected_downtime_ms: int = 0
    downtime_ms: int = 0  # the real one, once completed
    total_time_ms: int = 0
    throttle_percent: int = 0  # auto-converge's CPU throttle
    error: str = ""


class MigrationStatus(BaseModel):
    """The source's view: phase ``none`` (nothing under way), ``mirroring`` (disks copying),
    ``mirrored`` (every disk caught up), ``migrating``, ``completed`` (the source is paused,
    the destination has the VM), ``failed`` or ``cancelled`` (the VM runs here)."""

    phase: str = "none"
    disks: list[MirrorProgress] = Field(default_factory=list)
    disk_percent: float = 0.0
    memory: MemoryProgress = Field(default_factory=MemoryProgress)
    downtime_limit_ms: int = 0
    reason: str = ""  # why it failed or was cancelled
    vm_status: str = ""  # the source QEMU's run state
    # the mirrors ended complete after the memory moved: the destination's disks have every
    # write (until then the destination must not run the guest)
    mirrors_complete: bool = False


class MigrationPrepared(BaseModel):
    """Where the destination listens: NBD for the disks, the migration stream for memory."""

    address: str
    nbd_port: int
    migration_port: int
    exports: dict[str, str]  # block node -> NBD export name


class MigrationPrepareRequest(BaseModel):
    spec: InstanceSpec
    sizes: dict[str, int] = Field(default_factory=dict)  # volume id -> bytes (created empty)
    address: str  # this node's address for the disks and memory (its underlay address)
    peer: str = ""  # the source's address: the only one the memory stream is taken from


class MigrationMirrorRequest(BaseModel):
    iid: str
    address: str
    port: int
    disks: list[MirrorDisk]


class MigrationStartRequest(BaseModel):
    iid: str
    address: str
    port: int
    timeout: float = Field(MIGRATION_TIMEOUT, gt=0)
    downtime_ms: int = Field(50, ge=1)
    max_downtime_ms: int = Field(1000, ge=1)


class MigrationWaitRequest(BaseModel):
    iid: str
    wait: float = Field(1.0, ge=0, le=60)  # seconds to wait for the migration to end
    # the memory moved (the source paused): end the mirrors at once, their last writes copied
    # (``migrate_complete``), sparing the paused guest a round trip
    end_mirrors: bool = False


class MigrationCancelRequest(BaseModel):
    iid: str
    resume: bool = True  # a source paused by a finished migration runs again


class MigrationFinishRequest(BaseModel):
    iid: str
    timeout: float = Field(60.0, gt=0)


class MigrationAbortRequest(BaseModel):
    iid: str
    tap: str | None = None


class MigrationCleanupRequest(BaseModel):
    iid: str
    tap: str | None = None
    volumes: list[str] = Field(default_factory=list)


class CreditStatus(BaseModel):
    """A burstable instance's CPU credits as its node keeps them (credits are core-seconds)."""

    mode: str
    baseline: float
    ceiling: float
    balance: float
    maximum: float
    surplus: float  # core-seconds above the baseline with no credits (unlimited mode)
    held: bool  # held to its baseline (standard mode, out of credits)
    quota: float  # the CPU quota applied now (cores)


class InstanceCreditsRequest(BaseModel):
    iid: str
    mode: str | None = None  # standard | unlimited: change it (running or not); None: look


# -- high availability: replicated disks (corral.node.replica_agent) ---------------------------
REPLICA_SYNCING, REPLICA_IN_SYNC, REPLICA_DEGRADED = "syncing", "in-sync", "degraded"


class ReplicaServeRequest(BaseModel):
    """On the secondary: keep replicas of ``spec``'s disks and serve them over NBD."""

    spec: InstanceSpec
    sizes: dict[str, int] = Field(default_factory=dict)  # volume id -> bytes
    address: str  # this node's address to serve on (its migration address)
    peer: str = ""  # the primary's address (recorded; NBD names are the secret)


class ReplicaServed(BaseModel):
    """Where the secondary serves the replicas: one NBD export per disk."""

    address: str
    port: int
    exports: dict[str, str]  # block node -> NBD export name (a random token)
    pid: int = 0  # the qemu-storage-daemon's


class ReplicaMirrorRequest(BaseModel):
    iid: str
    address: str
    port: int
    disks: list[MirrorDisk]


class ReplicaStatus(BaseModel):
    """The primary's view of its replica: ``state`` is syncing (with ``percent``), in-sync
    (every write reaches both nodes before the guest hears of it) or degraded (no mirror runs:
    the secondary or the link failed, or replication was never started)."""

    state: str
    percent: float = 0.0
    disks: list[MirrorProgress] = Field(default_factory=list)
    reason: str = ""


class ReplicaDropRequest(BaseModel):
    iid: str
    volumes: list[str] = Field(default_factory=list)


class ReplicaPromoteRequest(BaseModel):
    """On the secondary, after the primary's node died: run ``spec`` from the replicas."""

    spec: InstanceSpec


# -- cold moves of stopped instances: `corral node evacuate` (corral.node.evacuate_agent) ------
class EvacuateSendRequest(BaseModel):
    """On the source: copy a stopped instance's disks into the destination's NBD exports."""

    iid: str
    address: str  # where the destination serves them (its migration address)
    port: int
    disks: list[MirrorDisk]  # sync top: the root overlay's own clusters; full: a whole volume


class EvacuateAcceptRequest(BaseModel):
    """On the destination: the copies checked, take them as ``spec``'s own disks."""

    spec: InstanceSpec


class EvacuateAbortRequest(BaseModel):
    """On the destination: remove a copy made for a cold move that did not happen."""

    iid: str
    tap: str | None = None
    volumes: list[str] = Field(default_factory=list)
