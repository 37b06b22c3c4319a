"""What the controller may ask of a node. The agent (``corral.node.agent``) and the fake node
(``corral.node.fake``) implement it; the controller reaches them through the wire
(``corral.node.remote``, generated from the declarations in ``corral.node.wire``)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from corral.node.spec import (
    Confinement,
    CreditStatus,
    EventBatch,
    ExitInfo,
    HealthCheck,
    HostRecord,
    InstanceMetadata,
    InstanceSpec,
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


class NodeClient(Protocol):
    async def info(self) -> NodeInfo: ...

    async def heartbeat(
        self,
        session: str = "",
        seq: int = 0,
        confirmed: int = 0,
        fence_after: float = 0.0,
        peers: list[str] | None = None,
    ) -> str: ...

    async def peer_heard(self, addresses: list[str]) -> list[float | None]: ...

    async def image_missing(self, manifests: list[str], blobs: list[str]) -> list[str]: ...

    async def image_blob_put(
        self, sha256: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def image_manifest_put(self, digest: str, manifest: str) -> None: ...

    async def network_ensure(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None: ...

    async def network_hosts(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None: ...

    async def network_policy(self, policy: PolicySpec) -> None: ...

    async def network_remove(self, spec: NetworkSpec) -> None: ...

    async def dns_update(self, put: dict[str, str], remove: list[str]) -> None: ...

    async def metadata_put(self, network: NetworkSpec, documents: list[InstanceMetadata]) -> None:
        """Every document the metadata service answers on ``network`` (the whole set)."""
        ...

    async def overlay_ensure(self, spec: OverlaySpec) -> None: ...

    async def overlay_remove(self, namespace: str, vni: int) -> None: ...

    async def router_ensure(self, spec: RouterSpec) -> None: ...

    async def instance_create(self, spec: InstanceSpec) -> None: ...

    async def instance_start(self, spec: InstanceSpec) -> int: ...

    async def instance_stop(
        self, iid: str, timeout: float, force: bool = False
    ) -> ExitInfo | None: ...

    async def instance_reboot(self, iid: str, timeout: float) -> str: ...

    async def instance_destroy(self, iid: str, tap: str | None = None) -> None: ...

    async def instances(self) -> list[ObservedInstance]: ...

    async def instance_confinement(self, iid: str) -> Confinement | None: ...

    async def instance_credits(self, iid: str, mode: str | None = None) -> CreditStatus | None: ...

    async def console_log(self, iid: str, tail: int = 65536) -> bytes: ...

    async def console_connect(
        self, iid: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def port_connect(
        self, iid: str, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def volume_create(
        self,
        vid: str,
        size: int,
        snapshot_id: str | None = None,
        image_digest: str | None = None,
        fs: str | None = None,
        label: str = "",
    ) -> None: ...

    async def volume_delete(self, vid: str) -> None: ...

    async def volume_attach(
        self, iid: str, vid: str, iops: int = 0, iops_burst: int = 0, bps: int = 0
    ) -> bool: ...

    async def volume_detach(self, iid: str, vid: str, timeout: float = 20.0) -> bool: ...

    async def instance_volumes(self, iid: str) -> list[str]: ...

    async def snapshot_create(self, sid: str, vid: str, instance_id: str | None = None) -> str: ...

    async def snapshot_delete(self, sid: str) -> None: ...

    async def image_capture(
        self,
        base_digest: str,
        name: str,
        version: str,
        description: str,
        instance_id: str | None = None,
        snapshot_id: str | None = None,
    ) -> str: ...

    async def image_delete(self, digest: str) -> None: ...

    async def health_check(self, address: str, check: HealthCheck, namespace: str = "") -> str: ...

    async def instance_relink(self, iid: str, down: float = 0.3) -> bool: ...

    async def address_moved(self, network: NetworkSpec, address: str) -> None: ...

    async def ping(self, address: str, count: int = 1) -> bool: ...

    async def events(self, after: int = 0, epoch: str = "", wait: float = 0.0) -> EventBatch: ...

    async def teardown(self) -> None: ...

    async def stats(self) -> NodeStats: ...
    # -- live migration (corral.node.migrate_agent) ----------------------------------------
    async def migrate_prepare(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> MigrationPrepared: ...

    async def migrate_incoming(self, iid: str) -> None: ...

    async def migrate_mirror(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> MigrationStatus: ...

    async def migrate_start(
        self,
        iid: str,
        address: str,
        port: int,
        timeout: float = 600.0,
        downtime_ms: int = 50,
        max_downtime_ms: int = 1000,
    ) -> MigrationStatus: ...

    async def migrate_status(self, iid: str) -> MigrationStatus: ...

    async def migrate_wait(
        self, iid: str, wait: float = 1.0, end_mirrors: bool = False
    ) -> MigrationStatus: ...

    async def migrate_complete(self, iid: str) -> None: ...

    async def migrate_cancel(self, iid: str, resume: bool = True) -> MigrationStatus: ...

    async def migrate_finish(self, iid: str, timeout: float = 60.0) -> str: ...

    async def migrate_abort(self, iid: str, tap: str | None = None) -> None: ...

    async def migrate_cleanup(
        self, iid: str, tap: str | None = None, volumes: list[str] | None = None
    ) -> None: ...

    # high availability: replicated disks (corral.node.replica_agent)
    async def replica_serve(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> ReplicaServed: ...

    async def replica_mirror(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> ReplicaStatus: ...

    async def replica_status(self, iid: str) -> ReplicaStatus: ...

    async def replica_stop(self, iid: str) -> None: ...

    async def replica_drop(self, iid: str, volumes: list[str] | None = None) -> None: ...

    async def replica_promote(self, spec: InstanceSpec) -> int: ...

    # cold moves of stopped instances (corral.node.evacuate_agent)
    async def evacuate_receive(
        self, spec: InstanceSpec, sizes: dict[str, int], address: str, peer: str = ""
    ) -> ReplicaServed: ...

    async def evacuate_send(
        self, iid: str, address: str, port: int, disks: list[MirrorDisk]
    ) -> list[str]: ...

    async def evacuate_accept(self, spec: InstanceSpec) -> None: ...

    async def evacuate_abort(
        self, iid: str, tap: str | None = None, volumes: list[str] | None = None
    ) -> None: ...
