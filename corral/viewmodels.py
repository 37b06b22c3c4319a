"""Wire models of the operator views: the counters `corral top` and the dashboard read
(GET /v1/stats) and the events of GET /v1/events. Counters are totals since the instance's QEMU
started (rates are the reader's: two samples and their times)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class InstanceStats(BaseModel):
    id: str
    name: str
    account_id: str
    node: str | None = Field(None, description="the node's name")
    state: str
    time: float | None = Field(None, description="when the counters were read (epoch s)")
    cpu_seconds: float | None = None
    cpu_limit: float = Field(0.0, description="cores it may use; 0: one per vCPU")
    vcpus: int = 1
    memory_bytes: int | None = Field(None, description="what its QEMU holds now")
    memory_limit: int = Field(0, description="the guest's memory")
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = Field(None, description="received by the guest")
    net_tx_bytes: int | None = Field(None, description="sent by the guest")
    started_at: float | None = Field(None, description="its QEMU's start (epoch s)")


class NodeStats(BaseModel):
    id: str
    name: str
    state: str
    zone: str
    cordoned: bool
    answered: bool = Field(description="false: the node gave no figures (error says why)")
    error: str = ""
    time: float | None = None
    cpus: int = 0
    cpu_seconds: float | None = Field(None, description="host CPU time spent busy")
    load1: float | None = None
    memory_total: int | None = None
    memory_available: int | None = None
    instances: int = 0


class Stats(BaseModel):
    nodes: list[NodeStats] = Field(description="admins only; empty for other accounts")
    instances: list[InstanceStats]


class Event(BaseModel):
    """One state change: what kind of object, which, and its state after the change."""

    kind: Literal["instance", "operation", "node", "volume"]
    id: str
    account_id: str | None = None
    change: Literal["created", "changed", "removed", "snapshot"]
    time: float
    data: dict[str, Any] = Field(default_factory=dict)
