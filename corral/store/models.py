"""Tables. Every resource belongs to an account; desired state lives beside observed state."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stored naive in UTC (SQLite keeps no zone), handed back aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use corral.store.models.utcnow()")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AccessKey(Base):
    __tablename__ = "access_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[str] = mapped_column(String(255))  # sealed: controller/secrets_box.py
    description: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(200), default="local")
    state: Mapped[str] = mapped_column(String(16), default="up")  # up | down | draining
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    accel: Mapped[str] = mapped_column(String(8), default="")
    accel_reason: Mapped[str] = mapped_column(Text, default="")
    qemu_version: Mapped[str] = mapped_column(String(64), default="")
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_seen: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # placement (migration 0004_sched): where the node is, what it offers, what is claimed.
    # The claimed_* totals move only with the instances' own claim columns, in one transaction.
    zone: Mapped[str] = mapped_column(String(64), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cordoned: Mapped[bool] = mapped_column(Boolean, default=False)
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    disk: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes for instance disks; 0 = ?
    memory_overhead: Mapped[int] = mapped_column(BigInteger, default=0)  # QEMU's, per instance
    memory_reserved: Mapped[int] = mapped_column(BigInteger, default=0)  # kept for the host
    claimed_memory: Mapped[int] = mapped_column(BigInteger, default=0)
    claimed_cores: Mapped[float] = mapped_column(Float, default=0.0)
    claimed_disk: Mapped[int] = mapped_column(BigInteger, default=0)
    # where the controller stands in the node's event log (resumed from after a restart)
    event_epoch: Mapped[str] = mapped_column(String(32), default="", server_default="")
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Network(Base):
    __tablename__ = "networks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    cidr: Mapped[str] = mapped_column(String(43))
    gateway: Mapped[str] = mapped_column(String(39))
    domain: Mapped[str] = mapped_column(String(253))
    namespace: Mapped[str] = mapped_column(String(64))
    bridge: Mapped[str] = mapped_column(String(15))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # a non-default VPC subnet's network (named by the subnet id, in the VPC's own namespace):
    # the /30 of its veth into the node's namespace (controller/vpc_networks.py); None: the
    # node's default network
    transit: Mapped[str | None] = mapped_column(String(43), default=None)
    __table_args__ = (UniqueConstraint("node_id", "name"),)


class Image(Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64), default="1")
    digest: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="available")
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    kind: Mapped[str] = mapped_column(String(16), default="busybox")
    description: Mapped[str] = mapped_column(Text, default="")
    default_user: Mapped[str] = mapped_column(String(32), default="root")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # EC2: instance-store (the appliance) or ebs (root from a snapshot); where it came from
    root_device_type: Mapped[str] = mapped_column(String(16), default="instance-store")
    root_snapshot_id: Mapped[str | None] = mapped_column(String(32), default=None)
    source_instance_id: Mapped[str | None] = mapped_column(String(32), default=None)
    __table_args__ = (UniqueConstraint("account_id", "name", "version"),)


class KeyPair(Base):
    __tablename__ = "key_pairs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    key_type: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"), index=True)
    network_id: Mapped[str | None] = mapped_column(ForeignKey("networks.id"))
    # observed/lifecycle state and the state Corral drives it towards
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    desired_state: Mapped[str] = mapped_column(String(16), default="running")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    instance_type: Mapped[str] = mapped_column(String(32), default="")
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    cpu_limit: Mapped[float] = mapped_column(Float, default=0.0)  # cores; 0 = cpus
    memory: Mapped[int] = mapped_column(BigInteger)
    disk_size: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    private_ip: Mapped[str | None] = mapped_column(String(39))
    restart_policy: Mapped[str] = mapped_column(String(16), default="on-failure")
    net_limit_mbit: Mapped[float | None] = mapped_column(Float, default=None)
    # EC2 instance metadata options: IMDSv2 tokens optional|required, PUT response hop limit
    metadata_tokens: Mapped[str] = mapped_column(String(16), default="optional")
    metadata_hop_limit: Mapped[int] = mapped_column(Integer, default=1)
    metadata_endpoint: Mapped[str] = mapped_column(String(16), default="enabled")
    stop_timeout: Mapped[float | None] = mapped_column(Float, default=None)
    # EC2 instance attributes: TerminateInstances refused while set; what a power-off from
    # inside the guest means (stop | terminate); CloudWatch-style detailed monitoring as asked
    # (Corral's metrics are always on); the source/destination check
    disable_api_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    shutdown_behavior: Mapped[str] = mapped_column(String(16), default="stop")
    monitoring: Mapped[str] = mapped_column(String(16), default="disabled")
    source_dest_check: Mapped[bool] = mapped_column(Boolean, default=True)
    user_data: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    ssh_keys: Mapped[list[Any]] = mapped_column(default=list)
    key_name: Mapped[str | None] = mapped_column(String(255))
    client_token: Mapped[str | None] = mapped_column(String(64))
    reservation_id: Mapped[str | None] = mapped_column(String(32))
    pid: Mapped[int | None] = mapped_column(Integer)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    launch_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    terminated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # what this instance holds on its node (guest memory plus QEMU's overhead, host cores,
    # disk) until it is terminated; zeroed when released (migration 0004_sched)
    placement_group_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    claim_memory: Mapped[int] = mapped_column(BigInteger, default=0)
    claim_cores: Mapped[float] = mapped_column(Float, default=0.0)
    claim_disk: Mapped[int] = mapped_column(BigInteger, default=0)
    # CPU credits (migration 0009_fair): cores it may use for ever (0: not burstable) and
    # what happens when its credits run out (standard: held to the baseline; unlimited)
    cpu_baseline: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_credits: Mapped[str] = mapped_column(String(16), default="standard")
    # the VPC subnet its interface is in (migration 0009_vpc); None for instances made before
    subnet_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    # failure handling (migration 0012_fence, controller/failover.py): HA instances are fenced
    # and failed over; the generation grows with every move, and nodes refuse older commands
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # high availability (migrations 0012_fence and 0012_ha, controller/replicas.py): disks
    # replicated to a secondary node; the replica's state as the primary's agent last reported
    ha: Mapped[bool] = mapped_column(Boolean, default=False)
    secondary_node_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    replica_state: Mapped[str] = mapped_column(String(16), default="")  # syncing|in-sync|degraded
    replica_percent: Mapped[float] = mapped_column(Float, default=0.0)
    replica_detail: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (
        # a name is unique per account among instances that are not terminated
        Index(
            "uq_instances_live_name",
            "account_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'terminated'"),
            postgresql_where=text("state != 'terminated'"),
        ),
    )


class Address(Base):
    """A private address leased to an instance on a network (IPAM)."""

    __tablename__ = "addresses"
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(39), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Operation(Base):
    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    type: Mapped[str] = mapped_column(String(48))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    target_kind: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(64), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # the controller running it and until when (renewed while it runs; another controller
    # takes over an unfinished operation whose lease has ended)
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Claim(Base):
    """A named lock held by one controller (``owner``) until ``expires_at`` unless renewed:
    "an operation is working on this instance", across every controller of the database."""

    __tablename__ = "claims"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    holder: Mapped[str] = mapped_column(String(128), default="")  # e.g. the operation's id
    token: Mapped[str] = mapped_column(String(32))  # one acquisition (release only our own)
    acquired_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class OperationEvent(Base):
    __tablename__ = "operation_events"
    operation_id: Mapped[str] = mapped_column(
        ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)


# -- EC2 resources (migration 0100) -----------------------------------------------------------


class Tag(Base):
    """A tag on any taggable resource, keyed by the resource's id (ids are unique across kinds)."""

    __tablename__ = "tags"
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SecurityGroup(Base):
    __tablename__ = "security_groups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # the VPC it belongs to: "" the account's default VPC (the nodes' shared networks), else a
    # VPC of its own (CreateSecurityGroup VpcId=; each VPC has its "default" group)
    vpc_id: Mapped[str] = mapped_column(String(32), default="", server_default="")
    __table_args__ = (
        UniqueConstraint("account_id", "vpc_id", "name", name="uq_security_groups_vpc_name"),
    )


class SecurityGroupRule(Base):
    """One permission: protocol and ports from (ingress) or to (egress) a CIDR or a group."""

    __tablename__ = "security_group_rules"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True
    )
    direction: Mapped[str] = mapped_column(String(8))  # ingress | egress
    protocol: Mapped[str] = mapped_column(String(8))  # -1 (all), tcp, udp, icmp or a number
    from_port: Mapped[int | None] = mapped_column(Integer)
    to_port: Mapped[int | None] = mapped_column(Integer)
    cidr: Mapped[str | None] = mapped_column(String(43))
    source_group_id: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(255), default="")


class InstanceSecurityGroup(Base):
    __tablename__ = "instance_security_groups"
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id"), primary_key=True, index=True
    )


class ElasticAddress(Base):
    """A public address from the configured pool, owned by an account, maybe associated with an
    instance. The NAT that makes it reachable belongs to the networking work."""

    __tablename__ = "elastic_addresses"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # eipalloc-…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    public_ip: Mapped[str] = mapped_column(String(39), unique=True)
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)
    association_id: Mapped[str | None] = mapped_column(String(32))
    private_ip: Mapped[str | None] = mapped_column(String(39))
    domain: Mapped[str] = mapped_column(String(16), default="vpc")  # as asked at allocation
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Volume(Base):
    __tablename__ = "volumes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    size: Mapped[int] = mapped_column(Integer)  # GiB
    state: Mapped[str] = mapped_column(String(16), default="creating")
    volume_type: Mapped[str] = mapped_column(String(16), default="standard")
    # as asked (EC2's Iops for io1/io2/gp3, Throughput MiB/s for gp3); migration 0009_fair
    iops: Mapped[int | None] = mapped_column(Integer, default=None)
    throughput: Mapped[int | None] = mapped_column(Integer, default=None)
    availability_zone: Mapped[str] = mapped_column(String(64))
    snapshot_id: Mapped[str | None] = mapped_column(String(32))
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)
    device: Mapped[str | None] = mapped_column(String(32))
    attach_state: Mapped[str | None] = mapped_column(String(16))
    attach_time: Mapped[dt.datetime | None] = mapped_column(default=None)
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(Text, default="")
    client_token: Mapped[str | None] = mapped_column(String(64), default=None)  # CreateVolume's
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Snapshot(Base):
    __tablename__ = "snapshots"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    volume_id: Mapped[str] = mapped_column(String(32))
    volume_size: Mapped[int] = mapped_column(Integer)  # GiB
    state: Mapped[str] = mapped_column(String(16), default="pending")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str] = mapped_column(String(255), default="")
    image_id: Mapped[str | None] = mapped_column(String(32))  # the image whose root disk it is
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LaunchPermission(Base):
    """An account (other than the owner) allowed to launch a private image."""

    __tablename__ = "launch_permissions"
    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[str] = mapped_column(String(12), primary_key=True, index=True)


class PlacementGroup(Base):
    """EC2's placement group: ``spread`` keeps its instances on different nodes, ``cluster``
    keeps them together (one zone, the same node where it has room)."""

    __tablename__ = "placement_groups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # pg-…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    strategy: Mapped[str] = mapped_column(String(16))  # spread | cluster
    state: Mapped[str] = mapped_column(String(16), default="available")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("account_id", "name"),)


# -- quotas and metering (migration 0009_fair) ------------------------------------------------


class AccountQuota(Base):
    """An account's own limit for one quota (``instances``, ``vcpus`` …), overriding the
    settings' default; -1 means unlimited."""

    __tablename__ = "account_quotas"
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class UsageRecord(Base):
    """From ``time`` on, resource ``resource_id`` of an account is in ``state`` (``detail``
    and ``amount`` say what it is: an instance's type and vCPUs, a volume's GiB …) until the
    resource's next record. Written in the transaction that changes the resource, so usage is
    derived from recorded transitions and a crashed daemon loses nothing (metering.py)."""

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(12), index=True)
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # instance | volume | snapshot | image | address
    time: Mapped[dt.datetime] = mapped_column(index=True)
    state: Mapped[str] = mapped_column(String(16))  # "gone" ends the resource's usage
    detail: Mapped[str] = mapped_column(String(64), default="")
    amount: Mapped[float] = mapped_column(Float, default=0.0)


class UsageMeter(Base):
    """The last counters of a running instance that metering has turned into usage records
    (``cpu`` seconds, ``network`` bytes): the next reading's growth over these is what is new.
    Updated in the transaction that writes those records, so a restart never counts twice
    (metering.py, ``advance``)."""

    __tablename__ = "usage_meters"
    instance_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(32), default="")
    qemu_started: Mapped[float] = mapped_column(Float, default=0.0)  # the QEMU's start (epoch)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    net_rx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    net_tx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # unlimited CPU credits' surplus as the node counts it (None: not burstable)
    cpu_surplus: Mapped[float | None] = mapped_column(Float, nullable=True)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow)


class JoinToken(Base):
    """A single-use node join token (`corral node token`): only its sha256 is kept."""

    __tablename__ = "join_tokens"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    used_by: Mapped[str] = mapped_column(String(64), default="")  # the node that joined with it


# -- VPCs (migration 0009_vpc) ------------------------------------------------------------------


class Vpc(Base):
    """An account's private network: a CIDR its subnets carve up (corral/controller/vpcs.py)."""

    __tablename__ = "vpcs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # vpc-…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    cidr: Mapped[str] = mapped_column(String(43))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    dns_support: Mapped[bool] = mapped_column(Boolean, default=True)
    dns_hostnames: Mapped[bool] = mapped_column(Boolean, default=False)
    # available, or deleted: a deleted default VPC stays as a mark that the account had one
    # (it is not made again on first use; CreateDefaultVpc makes a new one)
    state: Mapped[str] = mapped_column(String(16), default="available")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Subnet(Base):
    """A CIDR inside a VPC, in one availability zone."""

    __tablename__ = "subnets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # subnet-…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    vpc_id: Mapped[str] = mapped_column(ForeignKey("vpcs.id"), index=True)
    cidr: Mapped[str] = mapped_column(String(43))
    zone: Mapped[str] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    map_public_ip: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InternetGateway(Base):
    """An internet gateway, attached to at most one VPC of its account."""

    __tablename__ = "internet_gateways"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # igw-…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    vpc_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ControllerEpoch(Base):
    """The controller lock's epoch row (controller/leader.py, migration 0012_fence): one row,
    its epoch grown by every controller that takes the lock."""

    __tablename__ = "controller_epoch"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    holder: Mapped[str] = mapped_column(String(200), default="")
    since: Mapped[dt.datetime | None] = mapped_column(default=None)


class OverlaySegment(Base):
    """A layer-2 segment that spans nodes over VXLAN (issue 12, controller/overlays.py): its
    VNI, allocated here, unique (the database's constraint). ``key`` names what the segment
    carries: ``default:<cidr>`` for the zone's default subnet, which every account's default
    VPC shares on a node (one bridge, one IPAM, accounts kept apart by security groups)."""

    __tablename__ = "overlay_segments"
    key: Mapped[str] = mapped_column(String(96), primary_key=True)
    vni: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
