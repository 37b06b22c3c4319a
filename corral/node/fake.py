"""A node that only flips states: for fast controller tests and for benchmarks that need more
instances than this machine can boot (always labelled so). Never a substitute for the agent in
integration tests."""

from __future__ import annotations

import asyncio
import itertools
import time

from corral.errors import WrongState
from corral.node.spec import (
    Accel,
    ExitInfo,
    ForwardInfo,
    HostRecord,
    InstanceSpec,
    NetworkSpec,
    NodeInfo,
    ObservedInstance,
    PolicySpec,
)


class FakeNode:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.specs: dict[str, InstanceSpec] = {}
        self.running: dict[str, int] = {}
        self.exits: dict[str, ExitInfo] = {}
        self.hosts: dict[str, list[HostRecord]] = {}
        self.policies: dict[str, PolicySpec] = {}
        self.dns: dict[str, str] = {}
        self.fail_start: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self._pids = itertools.count(10000)

    async def info(self) -> NodeInfo:
        return NodeInfo(name=self.name, cpus=2, memory=8 << 30, qemu="fake", qemu_version="0",
                        accel=Accel(accel="tcg", reason="fake node"), namespace="fake",
                        cgroup="none", dnsmasq="", nft="")

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
        return [ObservedInstance(id=i, running=i in self.running, pid=self.running.get(i),
                                 status="running" if i in self.running else "",
                                 exit=self.exits.get(i)) for i in self.specs]

    async def console_log(self, iid: str, tail: int = 65536) -> bytes:
        return b"fake console\n"

    async def console_connect(self, iid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise WrongState("the fake node has no consoles")

    async def forward(self, iid: str, address: str, port: int) -> ForwardInfo:
        return ForwardInfo(host="127.0.0.1", port=1)

    # test helpers: make things happen behind the controller's back
    def crash(self, iid: str, reason: str = "crashed") -> None:
        self.running.pop(iid, None)
        self.exits[iid] = ExitInfo(reason=reason, detail="killed by SIGKILL", time=time.time())
