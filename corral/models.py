"""Wire models: the shapes the native REST API speaks. Shared by the server, the client library
and the CLI (one definition each), and by the controller for the requests it accepts."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from corral import units, xmltext
from corral.appliances.plan import Plan
from corral.errors import CorralError

RestartPolicy = Literal["always", "on-failure", "never"]
# text that can reach an EC2 answer (names, descriptions, keys): no character XML 1.0 forbids
Text = Annotated[str, AfterValidator(xmltext.valid)]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    resource: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="image name (tiny), name:version, or id (ami-…)")
    name: Text | None = Field(None, description="host name; generated when left out")
    instance_type: str | None = Field(
        None, description="an instance type (cr1.micro …); sets cpus, CPU share and memory"
    )
    cpus: int = Field(1, ge=1, le=64)
    memory: str | int = Field("256M", description="guest memory, e.g. 256M or 1G")
    disk: str | int | None = Field(None, description="root disk size; default the image's")
    keys: list[Text] = Field(default_factory=list, description="names of key pairs")
    public_keys: list[Text] = Field(default_factory=list, description="OpenSSH public keys")
    user_data: str | None = Field(None, description="user-data (a script starting with #!)")
    restart_policy: RestartPolicy = "on-failure"
    address: str | None = Field(None, description="a fixed private address")
    stop_timeout: float | None = Field(None, ge=0, le=3600)
    net_limit_mbit: float | None = Field(
        None, gt=0, le=100000, description="bandwidth cap each way, Mbit/s"
    )
    metadata_tokens: Literal["optional", "required"] = Field(
        "optional", description="IMDSv2 session tokens optional or required"
    )
    metadata_hop_limit: int = Field(
        1, ge=1, le=64, description="IP hops an IMDSv2 token answer may travel"
    )
    zone: str | None = Field(None, description="the availability zone to run in")
    node: str | None = Field(None, description="pin to this node (name or id)")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="labels the node must carry (k: v)"
    )
    placement_group: str | None = Field(None, description="a placement group (name or pg- id)")
    subnet: str | None = Field(
        None, description="the subnet (subnet- id); default: the default VPC's default subnet"
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="tags (exclusion tags keep equal values apart)"
    )
    security_groups: list[Text] = Field(
        default_factory=list, description="security groups (names or sg- ids); default: default"
    )
    ha: bool = Field(
        False,
        description="high availability: disks replicated synchronously to a secondary node, "
        "restarted there when the primary's node dies",
    )

    @field_validator("disk")
    @classmethod
    def _disk_is_a_size(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            try:
                units.check_disk(v)
            except CorralError as err:
                raise ValueError(err.message) from err
        return v


class Instance(BaseModel):
    id: str
    name: str
    account_id: str
    image_id: str
    image_name: str = ""
    state: str
    state_code: int
    desired_state: str
    state_reason: str = ""
    node: str | None = None
    cpus: int
    memory: int
    disk_size: int
    private_ip: str | None = None
    mac: str
    hostname: str = ""
    key_name: str | None = None
    restart_policy: str
    net_limit_mbit: float | None = None
    metadata_tokens: str = "optional"
    metadata_hop_limit: int = 1
    subnet_id: str | None = None
    restarts: int = 0
    pid: int | None = None
    launch_time: dt.datetime
    started_at: dt.datetime | None = None
    stopped_at: dt.datetime | None = None
    terminated_at: dt.datetime | None = None
    # high availability (controller/replicas.py)
    ha: bool = False
    secondary_node: str | None = None
    replica_state: str = ""  # syncing | in-sync | degraded ("" when not HA)
    replica_percent: float = 0.0
    replica_detail: str = ""


class Operation(BaseModel):
    id: str
    type: str
    status: str
    target_kind: str
    target_id: str
    progress: float
    message: str = ""
    error: ErrorBody | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    seq: int = 0
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class OperationEvent(BaseModel):
    seq: int
    time: dt.datetime
    kind: str
    message: str
    progress: float


class InstanceAccepted(BaseModel):
    operation: Operation | None = Field(None, description="absent when nothing had to be done")
    instance: Instance


class InstanceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text | None = Field(None, description="a new name (DNS names follow)")


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float | None = Field(None, ge=0, le=3600, description="seconds before forcing")
    force: bool = False


class RebootRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float | None = Field(None, ge=0, le=3600)


class MigrateRequest(BaseModel):
    """A live migration: to a given node, or to one the scheduler picks among the others."""

    model_config = ConfigDict(extra="forbid")
    to: str | None = Field(None, description="the destination node's name or id")
    timeout: float | None = Field(
        None, gt=0, le=86400, description="seconds before the migration is called off (600)"
    )


class DrainMove(BaseModel):
    instance: str  # name
    id: str
    operation: str  # the instance-migrate operation moving it


class DrainResult(BaseModel):
    """A node drained: cordoned, its running instances each moving by a live migration."""

    node: str
    cordoned: bool
    migrations: list[DrainMove]
    not_moved: dict[str, str]  # instance name -> why it stays


class EvacuateRequest(BaseModel):
    """`corral node evacuate`: the node's stopped instances moved cold to other nodes."""

    model_config = ConfigDict(extra="forbid")
    to: str | None = Field(None, description="the destination node (else the scheduler picks)")
    dry_run: bool = Field(False, description="only show where each would go; nothing changes")


class EvacuateMove(BaseModel):
    instance: str  # name
    id: str
    to: str  # the destination node's name
    operation: str | None = None  # the instance-evacuate operation moving it (none: dry run)


class EvacuateResult(BaseModel):
    """A node evacuated: cordoned, its stopped instances each moving cold to another node."""

    node: str
    cordoned: bool
    dry_run: bool
    moves: list[EvacuateMove]
    not_moved: dict[str, str]  # instance name -> why it stays


class RebalanceRequest(BaseModel):
    """`corral rebalance`: greedy live migrations that even out the cluster."""

    model_config = ConfigDict(extra="forbid")
    dry_run: bool = Field(False, description="only show the plan")
    max_moves: int = Field(10, ge=1, le=100, description="the most migrations the plan may hold")
    timeout: float | None = Field(
        None, gt=0, le=86400, description="seconds each migration may take (600)"
    )


class RebalanceMove(BaseModel):
    instance: str  # name
    id: str
    source: str  # node names
    target: str
    score: float  # the cluster's score after this move


class NodeUse(BaseModel):
    memory: float  # claimed / capacity, after the plan
    cpu: float


class RebalancePlan(BaseModel):
    """The plan (score: lower is more even; see docs/operator-guide.md) and, unless a dry run
    or nothing to do, the ``cluster-rebalance`` operation carrying it out."""

    score_before: float
    score_after: float
    moves: list[RebalanceMove]
    not_moved: dict[str, str]  # instance name -> why it cannot move
    nodes: dict[str, NodeUse]
    operation: str | None


class Image(BaseModel):
    id: str
    name: str
    version: str
    digest: str
    state: str
    public: bool
    owner: str | None = None
    arch: str
    kind: str
    description: str = ""
    default_user: str
    size: int
    virtual_size: int
    created_at: dt.datetime
    base: str | None = Field(None, description="digest of the image this one is built on")


class ImageBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="a built-in recipe's name (tiny, debian)",
    )
    archive: str | None = Field(
        None,
        max_length=24 << 20,
        description="a recipe directory as base64 of a gzip tar of plain files "
        "(what `corral image build DIR` sends); give this or recipe",
    )
    force: bool = False


class ImageAccepted(BaseModel):
    operation: Operation
    image: Image | None = None


class ImageExport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delta_from: str | None = Field(
        None, description="ship only the difference to this image (the image's base)"
    )


class ImageTag(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    version: str = Field("1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,62}$")


class ImagePermissions(BaseModel):
    """Who may launch an image besides its owner (EC2's launch permissions)."""

    public: bool
    accounts: list[str] = Field(default_factory=list, description="12-digit account ids")


class ImagePermissionsChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: list[str] = Field(default_factory=list, description="account ids to share with")
    remove: list[str] = Field(default_factory=list, description="account ids to stop sharing with")
    public: bool | None = Field(None, description="true: public (admins only); false: private")


class KeyPair(BaseModel):
    id: str
    name: str
    key_type: str
    fingerprint: str
    public_key: str
    created_at: dt.datetime


class Confinement(BaseModel):
    """How a running instance's QEMU is confined, as its node observes it in /proc."""

    pid: int
    uid: int = Field(description="QEMU's own unprivileged uid (and gid), one per instance")
    gid: int
    groups: list[int] = Field(default_factory=list)
    capabilities: str = Field(description="effective capabilities, hex; 0 is none")
    seccomp: str = Field(description="filter when QEMU's -sandbox is on")
    no_new_privs: bool
    sandbox: str = Field(description="the -sandbox options QEMU runs with")
    jail: str = Field(description="the jail's mount point on the node; empty: the host's root")
    own_mount_namespace: bool
    cgroup: str
    devices: str
    block_io: str


class KeyPairCreated(KeyPair):
    private_key: str | None = None


class KeyImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    public_key: Text | None = Field(None, description="import this key; create a pair if absent")
    key_type: Literal["rsa", "ed25519"] = "ed25519"


class Node(BaseModel):
    id: str
    name: str
    state: str
    cpus: int
    memory: int
    accel: str
    accel_reason: str
    qemu_version: str
    last_seen: dt.datetime | None = None
    instances: int = 0
    strays: list[str] = Field(default_factory=list)
    zone: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    cordoned: bool = False
    # clusters: where the controller reaches it, and its capacity as placement counts it
    address: str = ""
    memory_claimed: int = 0
    memory_free: int = 0
    cores_claimed: float = 0.0
    cores_free: float = 0.0
    disk: int = 0
    disk_claimed: int = 0
    instance_ids: list[str] = Field(default_factory=list)
    lease: str = Field(
        "",
        description="a joined node's lease (failure detection): held, expired, "
        "expired-peers-reach-it (cut off from the controller only), or dead",
    )


class NodeUpdate(BaseModel):
    labels: dict[str, str] = Field(default_factory=dict)  # set these
    remove_labels: list[str] = Field(default_factory=list)


class SystemInfo(BaseModel):
    version: str
    region: str
    availability_zone: str
    state_dir: str
    database: str
    namespace: str
    subnet: str
    domain: str
    node: dict[str, Any]
    checks: list[dict[str, Any]] = Field(default_factory=list)


class Shutdown(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stop_instances: bool = False
    timeout: float | None = Field(None, ge=0, le=3600, description="seconds before forcing")


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(description="1-64 letters, digits or hyphens")


class Account(BaseModel):
    id: str
    name: str
    admin: bool
    created_at: dt.datetime


class AccessKeyCreated(BaseModel):
    access_key_id: str
    secret_access_key: str = Field(description="shown once; Corral cannot show it again")
    account_id: str
    account_name: str
    region: str
    endpoint: str


class AccountCreated(BaseModel):
    account: Account
    key: AccessKeyCreated


# -- volumes and snapshots ----------------------------------------------------------------------


class VolumeAttachment(BaseModel):
    instance_id: str
    instance_name: str = ""
    device: str
    state: str = Field(description="attaching, attached or detaching")
    attach_time: dt.datetime | None = None


class Volume(BaseModel):
    id: str
    name: str | None = None
    size: int = Field(description="bytes (whole GiB)")
    state: str = Field(description="creating, available, in-use, deleting or error")
    volume_type: str
    snapshot_id: str | None = Field(None, description="the snapshot it was restored from")
    attachment: VolumeAttachment | None = None
    delete_on_termination: bool = False
    root: bool = Field(False, description="the root disk of an EBS-style instance")
    error: str = ""
    created_at: dt.datetime


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: str | int | None = Field(
        None,
        description="e.g. 1G or 10G (whole GiB; a plain "
        "number is GiB); default: the snapshot's size",
    )
    name: Text | None = Field(None, description="a name to use instead of the id")
    snapshot: str | None = Field(None, description="restore this snapshot (snap-…)")
    fs: Literal["ext4"] | None = Field(
        None, description="format it (labelled with its name), so a guest only mounts it"
    )
    volume_type: str = "standard"
    iops: int | None = Field(None, description="io1, io2 (required), gp3: IO operations a second")
    throughput: int | None = Field(None, description="gp3: MiB a second (125-1000)")


class VolumeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text | None = None
    delete_on_termination: bool | None = Field(
        None, description="delete it when the instance it is attached to is terminated"
    )


class VolumeAttach(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance: str = Field(description="instance name or id")
    device: str | None = Field(
        None,
        description="a name like /dev/vdb (default: the next "
        "free); the guest finds it as /dev/disk/by-id/virtio-<serial>",
    )
    delete_on_termination: bool | None = None


class VolumeDetach(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = Field(
        False,
        description="if the guest does not release the disk, restart "
        "the instance without it (unsynced writes in the guest are lost)",
    )
    timeout: float | None = Field(
        None, gt=0, le=600, description="seconds the guest gets to release the disk"
    )


class VolumeAccepted(BaseModel):
    operation: Operation | None = Field(None, description="absent when nothing had to wait")
    volume: Volume


class Snapshot(BaseModel):
    id: str
    volume_id: str
    size: int = Field(description="bytes: the volume's size")
    state: str = Field(description="pending, completed, deleting or error")
    description: str = ""
    image_id: str | None = Field(None, description="the image whose root disk it is")
    error: str = ""
    created_at: dt.datetime


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: Text = Field("", max_length=255)


class SnapshotAccepted(BaseModel):
    operation: Operation
    snapshot: Snapshot


class VolumeRestore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text | None = None
    size: str | int | None = Field(None, description="at least the snapshot's size")


# -- appliances and replacing servers -----------------------------------------------------------


class ReplaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="the new image: name, name:version or ami- id")
    check: str | None = Field(
        None,
        pattern=r"^(ssh|\d{1,5}(/[!-~]*)?)$",
        description="health check: ssh (port 22, the default unless "
        "the instance's appliance declares one), a TCP port (80), or a "
        "port and HTTP path (80/health)",
    )
    timeout: float = Field(
        300.0, gt=0, le=3600, description="seconds the new instance gets to pass the check"
    )
    after_timeout: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="seconds the new instance gets to pass the check at the old address "
        "after taking over; default: timeout, at most 60",
    )

    @field_validator("check")
    @classmethod
    def _port_in_range(cls, v: str | None) -> str | None:
        if v is not None and v != "ssh" and not 1 <= int(v.partition("/")[0]) <= 65535:
            raise ValueError(f"port {v.partition('/')[0]} is not a TCP port: use 1-65535")
        return v


class ApplianceAccepted(BaseModel):
    plan: Plan
    operation: Operation | None = Field(None, description="absent when there is nothing to do")


class PlacementGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    strategy: Literal["spread", "cluster"] = Field(
        "spread", description="spread: one instance per node; cluster: together in one zone"
    )


class PlacementGroup(BaseModel):
    id: str
    name: str
    strategy: str
    state: str
    created_at: dt.datetime
    instances: list[str] = Field(default_factory=list, description="live members (ids)")


class NodeCapacity(BaseModel):
    id: str
    name: str
    state: str
    cordoned: bool
    zone: str
    instances: int
    memory_total: int = Field(description="bytes for instances: memory x ratio - reserve")
    memory_claimed: int
    memory_free: int
    cores_total: float = Field(description="host cores x the CPU allocation ratio")
    cores_claimed: float
    cores_free: float
    disk_total: int | None = Field(None, description="None: the node did not report its disk")
    disk_claimed: int
    disk_free: int | None = None
    fits: dict[str, int] = Field(description="instance type -> how many more fit here")


class Evacuation(BaseModel):
    node: str
    instances: int
    unplaced: list[str] = Field(description="instances that would find no room elsewhere")


class Capacity(BaseModel):
    nodes: list[NodeCapacity]
    fits: dict[str, int] = Field(description="instance type -> how many more fit in all")
    n_plus_one: bool = Field(description="any one node could fail and its instances fit")
    evacuations: list[Evacuation]
    cpu_allocation_ratio: float
    memory_allocation_ratio: float
    disk_allocation_ratio: float


# -- quotas (controller/quotas.py) -------------------------------------------------------------


class QuotaLimit(BaseModel):
    name: str
    limit: int = Field(description="-1: unlimited")
    used: int
    default: int
    overridden: bool = Field(description="true when the account has its own limit")
    ec2_code: str = Field(description="the EC2 error code when it is exceeded")


class Quotas(BaseModel):
    account_id: str
    account_name: str
    quotas: list[QuotaLimit]


class QuotaSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int | None = Field(
        description="the account's own limit; -1 unlimited; null: back to the default"
    )


# -- usage and bills (controller/metering.py) ---------------------------------------------------


class UsageLine(BaseModel):
    kind: str = Field(description="instance | volume | snapshot | image | address | cpu | network")
    detail: str = Field(description="instance type, volume type or image name")
    state: str
    seconds: float = Field(description="resource-seconds in this state over the period")
    amount_seconds: float = Field(description="vCPU-seconds (instances), GiB-seconds (storage)")
    resources: int
    quantity: float = Field(
        0.0,
        description="what was used: CPU-seconds (cpu), bytes (network, state in or out); "
        "0 for the other kinds",
    )


class Usage(BaseModel):
    account_id: str
    account_name: str
    start: dt.datetime
    end: dt.datetime
    lines: list[UsageLine]


class BillLine(BaseModel):
    kind: str
    detail: str
    state: str
    quantity: float
    unit: str = Field(description="hour | GiB-month")
    unit_price: float
    amount: float
    resources: int


class Bill(BaseModel):
    account_id: str
    account_name: str
    month: str
    start: dt.datetime
    end: dt.datetime
    currency: str
    lines: list[BillLine]
    total: float


# -- CPU credits (controller/credits.py) --------------------------------------------------------


class InstanceCredits(BaseModel):
    instance_id: str
    burstable: bool = Field(description="a baseline below the ceiling: it runs on CPU credits")
    mode: str = Field(description="standard (held to the baseline when out) | unlimited")
    baseline: float = Field(description="cores it may use for ever")
    ceiling: float = Field(description="cores it may use while it has credits")
    balance: float | None = Field(None, description="credits (core-seconds); while it runs")
    maximum: float | None = Field(None, description="the most credits it banks")
    surplus: float | None = Field(None, description="core-seconds above the baseline unbanked")
    held: bool | None = Field(None, description="held to its baseline now (out of credits)")
    quota: float | None = Field(None, description="the CPU quota applied now (cores)")


class CreditModeSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["standard", "unlimited"]


# -- cluster: joining nodes ----------------------------------------------------------------------
class NodeTokenCreate(BaseModel):
    ttl: str = "1h"  # seconds, or 15m, 1h, 2d (at most 7 days)


class NodeToken(BaseModel):
    token: str  # K1.<secret>.<sha256 of the CA certificate>; shown once, only its hash is kept
    expires_at: dt.datetime
    ca_fingerprint: str
    api_url: str


class NodeJoin(BaseModel):
    token: str
    certificate_request: str  # PEM CSR for the node's own key
    name: str
    address: str  # https://IP:PORT where the node's agent serves, reachable by the controller
    zone: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class NodeJoined(BaseModel):
    node_id: str
    certificate: str  # PEM, for server use, naming the node's address
    ca_certificate: str  # PEM: the CA the controller's client certificate comes from


# -- VPCs (issue 12) ---------------------------------------------------------------------------


class VpcCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cidr: str = Field(description="IPv4 CIDR, /16 to /28 (e.g. 10.0.0.0/16)")
    dns_hostnames: bool = Field(
        True,
        description="its instances get names in the VPC's DNS (EC2's CreateVpc makes a VPC "
        "without, as AWS does; ModifyVpcAttribute or PATCH changes it)",
    )


class VpcUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dns_hostnames: bool = Field(description="its instances get names in the VPC's DNS")


class Vpc(BaseModel):
    id: str
    cidr: str
    is_default: bool
    dns_support: bool
    dns_hostnames: bool
    internet_gateway: str | None = None
    subnets: list[str] = Field(default_factory=list, description="its subnets (ids)")
    created_at: dt.datetime


class SubnetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vpc: str = Field(description="the VPC (vpc- id)")
    cidr: str = Field(description="IPv4 CIDR inside the VPC, /16 to /28, not overlapping others")
    zone: str | None = Field(None, description="availability zone (default: the first)")


class Subnet(BaseModel):
    id: str
    vpc_id: str
    cidr: str
    zone: str
    is_default: bool
    map_public_ip: bool
    instances: list[str] = Field(default_factory=list, description="live instances (ids)")
    created_at: dt.datetime
