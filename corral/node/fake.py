"""A node that only flips states: for fast controller tests and for benchmarks that need more
instances than this machine can boot (always labelled so). Never a substitute for the agent in
integration tests."""

from __future__ import annotations

import asyncio
import itertools
import time

from corral.errors import NotFound, WrongState
from corral.images.store import ImageStore
from corral.node.spec import (
    Accel,
    ExitInfo,
    ForwardInfo,
    HealthCheck,
    HostRecord,
    InstanceSpec,
    NetworkSpec,
    NodeInfo,
    ObservedInstance,
    PolicySpec,
)


class FakeNode:
    def __init__(self, name: str = "fake", images: ImageStore | None = None) -> None:
        self.name = name
        self.images = images  # captured images go here when given
        self.volumes: dict[str, int] = {}
        self.snapshots: dict[str, str] = {}
        self.specs: dict[str, InstanceSpec] = {}
        self.running: dict[str, int] = {}
        self.exits: dict[str, ExitInfo] = {}
        self.hosts: dict[str, list[HostRecord]] = {}
        self.policies: dict[str, PolicySpec] = {}
        self.dns: dict[str, str] = {}
        self.fail_start: set[str] = set()
        self.plugged: dict[str, set[str]] = {}  # instance -> volumes hot-plugged
        self.held: set[str] = set()  # volumes the "guest" refuses to release
        self.unhealthy: set[str] = set()  # addresses whose health check fails
        self.calls: list[tuple[str, str]] = []
        self._pids = itertools.count(10000)

    async def info(self) -> NodeInfo:
        return NodeInfo(
            name=self.name,
            cpus=2,
            memory=8 << 30,
            qemu="fake",
            qemu_version="0",
            accel=Accel(accel="tcg", reason="fake node"),
            namespace="fake",
            cgroup="none",
            dnsmasq="",
            nft="",
        )

    async def network_ensure(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None:
        self.hosts[spec.id] = list(hosts)

    async def network_hosts(self, spec: NetworkSpec, hosts: list[HostRecord]) -> None:
        self.hosts[spec.id] = list(hosts)

    async def network_policy(self, policy: PolicySpec) -> None:
        self.policies[policy.network.id] = policy

    async def dns_update(self, put: dict[str, str], remove: list[str]) -> None:
        for name in remove:
            self.dns.pop(name, None)
        self.dns.update(put)

    async def instance_create(self, spec: InstanceSpec) -> None:
        self.calls.append(("create", spec.id))
        self.specs[spec.id] = spec

    async def instance_start(self, spec: InstanceSpec) -> int:
        self.calls.append(("start", spec.id))
        if spec.id in self.fail_start:
            from corral.node.driver.machine import LaunchFailed

            raise LaunchFailed(f"fake launch failure for {spec.id}")
        self.specs[spec.id] = spec
        if spec.id not in self.running:
            self.running[spec.id] = next(self._pids)
            self.plugged[spec.id] = {v.id for v in spec.volumes}
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
            )
            for i in self.specs
        ]

    async def console_log(self, iid: str, tail: int = 65536) -> bytes:
        return b"fake console\n"

    async def console_connect(self, iid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise WrongState("the fake node has no consoles")

    async def forward(self, iid: str, address: str, port: int) -> ForwardInfo:
        return ForwardInfo(host="127.0.0.1", port=1)

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

    async def volume_attach(self, iid: str, vid: str) -> bool:
        self.calls.append(("volume_attach", vid))
        if iid not in self.running:
            return False
        self.plugged.setdefault(iid, set()).add(vid)
        return True

    async def volume_detach(self, iid: str, vid: str, timeout: float = 20.0) -> bool:
        self.calls.append(("volume_detach", vid))
        if iid not in self.running:
            return False
        if vid in self.held:
            from corral.node.driver.hotplug import GuestHoldsDisk

            raise GuestHoldsDisk(
                f"the guest did not release {vid} within {timeout:.0f} s", resource="volume"
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

    async def health_check(self, address: str, check: HealthCheck) -> str:
        self.calls.append(("health_check", address))
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

    # test helpers: make things happen behind the controller's back
    def crash(self, iid: str, reason: str = "crashed") -> None:
        self.running.pop(iid, None)
        self.exits[iid] = ExitInfo(reason=reason, detail="killed by SIGKILL", time=time.time())
