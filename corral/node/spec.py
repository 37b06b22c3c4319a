"""What the controller asks of a node: wire models shared by the agent and its clients."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class NetworkSpec(BaseModel):
    id: str
    namespace: str
    bridge: str
    cidr: str
    gateway: str
    domain: str


class HostRecord(BaseModel):
    mac: str
    address: str
    names: list[str]  # DNS names; the first is what a reverse lookup answers
    hostname: str = ""  # the guest's host name (the metadata service tells the guest)
    zone: str = ""  # the guest's DHCP domain, its search domain (its account's zone)


class VolumeAttachment(BaseModel):
    """A volume the instance gets as an extra virtio disk, in attachment order."""

    id: str
    device: str  # the name the API gave (/dev/sdf …); the guest sees /dev/vdb, /dev/vdc …


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


class PortSpec(BaseModel):
    """An instance's port on the network: what the kernel checks and filters it by."""

    instance_id: str
    tap: str
    mac: str
    address: str
    groups: list[str] = Field(default_factory=list)
    public_ip: str | None = None  # an elastic IP mapped 1:1 to ``address``
    rate_mbit: float | None = None  # bandwidth cap each way; None: unlimited
    metadata_hop_limit: int = 1  # IP TTL of the metadata service's answers to IMDSv2 PUTs


class UplinkSpec(BaseModel):
    """The router side of a node's namespace: a veth to the outside world."""

    peer_netns: str | None = None  # the namespace standing for the outside (tests); None: host
    cidr: str  # the public network (elastic IPs come from it)
    address: str  # the node namespace's address on it
    gateway: str  # the outside router's address on it


class PolicySpec(BaseModel):
    """Everything the kernel enforces on one network, applied as one nft transaction."""

    network: NetworkSpec
    groups: list[GroupSpec] = Field(default_factory=list)
    ports: list[PortSpec] = Field(default_factory=list)
    uplink: UplinkSpec | None = None


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


class OverlaySpec(BaseModel):
    """A subnet's segment on this node, joined to the other nodes hosting it by VXLAN
    (corral/node/net/overlay.py): ``entries`` maps each remote guest MAC to the underlay
    address of its node; ``peers`` are those nodes (broadcast is replicated to them only)."""

    namespace: str
    bridge: str = Field(max_length=15)
    vni: int = Field(ge=1, lt=1 << 24)
    local: str  # this node's underlay address
    underlay_namespace: str | None = None  # where the underlay is; None: the agent's own
    underlay_dev: str | None = None
    peers: list[str] = Field(default_factory=list)
    entries: dict[str, str] = Field(default_factory=dict)


class OverlayRequest(BaseModel):
    spec: OverlaySpec


class OverlayRemoveRequest(BaseModel):
    namespace: str
    vni: int = Field(ge=1, lt=1 << 24)


class NetworkPolicyRequest(BaseModel):
    policy: PolicySpec


class DnsUpdateRequest(BaseModel):
    put: dict[str, str]
    remove: list[str]


class InstanceSpecRequest(BaseModel):
    spec: InstanceSpec


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


class HealthCheckRequest(BaseModel):
    address: str
    check: HealthCheck


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
