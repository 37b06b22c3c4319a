"""The `stats` call: counters of the node and of each running instance, from the places the
kernel and QEMU keep them: the instance's cgroup (CPU time, memory; the QEMU process's own
times where the cgroup has no CPU accounting), QMP ``query-blockstats`` (disk bytes) and its tap's
counters in the node's namespace (network bytes). Read-only; one ``ip`` run per call."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

import psutil

from corral.errors import CorralError
from corral.node.driver import cgroups
from corral.node.driver.machine import Machine
from corral.node.spec import InstanceSpec, InstanceStats, NodeStats
from corral.proc import arun

STATS_TIMEOUT = 5.0


def cgroup_cpu_seconds(group: cgroups.Group) -> float | None:
    """CPU time of the group's processes: v2 ``cpu.stat`` usage_usec, v1 ``cpuacct.usage``
    (where cpuacct shares the cpu hierarchy); None when neither is readable."""
    root, rel = cgroups.ROOT, group.rel
    with contextlib.suppress(OSError, ValueError):
        for line in (root / rel / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    for hierarchy in ("cpu", "cpuacct", "cpu,cpuacct"):
        with contextlib.suppress(OSError, ValueError):
            return int((root / hierarchy / rel / "cpuacct.usage").read_text()) / 1e9
    return None


def process_cpu_seconds(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)
    return None


async def tap_counters(namespace: str) -> dict[str, tuple[int, int]]:
    """tap name -> (rx bytes, tx bytes) as the host side counts them, for every link in the
    node's namespace; empty when they cannot be read."""
    try:
        out = await arun(["ip", "-n", namespace, "-s", "-j", "link", "show"], timeout=STATS_TIMEOUT)
        links = json.loads(out or "[]")
    except (CorralError, OSError, ValueError):  # no namespace (yet): no counters, no failure
        return {}
    found = {}
    for link in links:
        st = link.get("stats64") or {}
        with contextlib.suppress(KeyError, TypeError):
            found[str(link["ifname"])] = (int(st["rx"]["bytes"]), int(st["tx"]["bytes"]))
    return found


async def disk_bytes(m: Machine) -> tuple[int, int] | None:
    """Bytes read and written by all the instance's disks since its QEMU started."""
    if m.qmp is None:
        return None
    try:
        rows = await m.qmp.execute("query-blockstats", timeout=STATS_TIMEOUT)
    except CorralError:  # QMP busy or gone: the figure is unknown this time
        return None
    rd = wr = 0
    for row in rows or []:
        st = row.get("stats") or {}
        rd += int(st.get("rd_bytes", 0))
        wr += int(st.get("wr_bytes", 0))
    return rd, wr


async def read(
    machines: dict[str, Machine],
    spec_of: Callable[[str], InstanceSpec | None],
    cgroup_of: Callable[[str], cgroups.Group],
    namespace: str,
    surplus_of: Callable[[str], float | None] = lambda _iid: None,
) -> NodeStats:
    taps = await tap_counters(namespace)
    out = []
    others: dict[str, dict[str, tuple[int, int]]] = {}  # VPC namespaces' taps (issue 12)
    for iid, m in sorted(machines.items()):
        if not m.running or m.pid is None:
            continue
        spec = spec_of(iid)
        if spec is not None and spec.network.namespace != namespace:
            ns = spec.network.namespace
            if ns not in others:
                others[ns] = await tap_counters(ns)
            taps = {**taps, **others[ns]}
        group = cgroup_of(iid)
        cpu = cgroup_cpu_seconds(group)
        if cpu is None:
            cpu = process_cpu_seconds(m.pid)
        disk = await disk_bytes(m)
        tap = taps.get(spec.tap) if spec is not None else None
        started = None
        with contextlib.suppress(psutil.Error):
            started = psutil.Process(m.pid).create_time()
        out.append(
            InstanceStats(
                id=iid,
                cpu_seconds=cpu,
                cpu_limit=spec.cpu_limit if spec else 0.0,
                vcpus=spec.cpus if spec else 1,
                memory_bytes=group.memory_usage() or _rss(m.pid),
                memory_limit=spec.memory if spec else 0,
                disk_read_bytes=disk[0] if disk else None,
                disk_write_bytes=disk[1] if disk else None,
                # the tap's rx is what the guest sent, its tx what the guest received
                net_rx_bytes=tap[1] if tap else None,
                net_tx_bytes=tap[0] if tap else None,
                started_at=started,
                cpu_surplus_seconds=surplus_of(iid),
            )
        )
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    vm = psutil.virtual_memory()
    return NodeStats(
        time=time.time(),
        cpus=os.cpu_count() or 1,
        cpu_seconds=busy,
        load1=os.getloadavg()[0],
        memory_total=vm.total,
        memory_available=vm.available,
        instances=out,
    )


def _rss(pid: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return None
