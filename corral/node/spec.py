"""What the controller asks of a node: wire models shared by the agent and its clients."""

from __future__ import annotations

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
    names: list[str]


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


class ForwardInfo(BaseModel):
    host: str
    port: int
