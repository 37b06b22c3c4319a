"""What the controller may ask of a node. The agent (``corral.node.agent``) and the fake node
(``corral.node.fake``) implement it; the controller reaches them through the wire
(``corral.node.remote``, generated from the declarations in ``corral.node.wire``)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from corral.node.spec import (
    Confinement,
    EventBatch,
    ExitInfo,
    HealthCheck,
    HostRecord,
    InstanceSpec,
    NetworkSpec,
    NodeInfo,
    ObservedInstance,
    OverlaySpec,
    PolicySpec,
)


class NodeClient(Protocol):
    async def info(self) -> NodeInfo: ...

    async def network_ensure(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None: ...

    async def network_hosts(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None: ...

    async def network_policy(self, policy: PolicySpec) -> None: ...

    async def dns_update(self, put: dict[str, str], remove: list[str]) -> None: ...

    async def overlay_ensure(self, spec: OverlaySpec) -> None: ...

    async def overlay_remove(self, namespace: str, vni: int) -> None: ...

    async def instance_create(self, spec: InstanceSpec) -> None: ...

    async def instance_start(self, spec: InstanceSpec) -> int: ...

    async def instance_stop(
        self, iid: str, timeout: float, force: bool = False
    ) -> ExitInfo | None: ...

    async def instance_reboot(self, iid: str, timeout: float) -> str: ...

    async def instance_destroy(self, iid: str, tap: str | None = None) -> None: ...

    async def instances(self) -> list[ObservedInstance]: ...

    async def instance_confinement(self, iid: str) -> Confinement | None: ...

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

    async def volume_attach(self, iid: str, vid: str) -> bool: ...

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

    async def health_check(self, address: str, check: HealthCheck) -> str: ...

    async def instance_relink(self, iid: str, down: float = 0.3) -> bool: ...

    async def address_moved(self, network: NetworkSpec, address: str) -> None: ...

    async def ping(self, address: str, count: int = 1) -> bool: ...

    async def events(self, after: int = 0, epoch: str = "", wait: float = 0.0) -> EventBatch: ...

    async def teardown(self) -> None: ...
