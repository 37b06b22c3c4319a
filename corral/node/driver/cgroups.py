"""A small cgroupfs layer: one group per instance with its CPU, memory, pid, block-IO and
device limits.

Handles cgroup v2 (a normal Debian 12 host) and v1 (hosts like our build machines). The QEMU
process joins its group before it execs (see ``preexec``), so no thread escapes the limits.
Devices: v1 denies every device but the few QEMU uses (``devices.allow``); v2 has no devices
file (it takes a BPF program), so there the jail's handful of device nodes, no capabilities and
the seccomp sandbox keep QEMU from others. Block IO: each QEMU has its own blkio/io group (its
IO is accounted and, where the I/O scheduler supports it, weighted fairly)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "devices")
V2_CONTROLLERS = ("cpu", "memory", "pids", "io")
# what QEMU may open: null, zero, random, urandom, /dev/net/tun (the launcher opens the tap
# inside the group), /dev/kvm
DEVICE_ALLOW = ("c 1:3 rwm", "c 1:5 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 10:200 rwm", "c 10:232 rwm")
IO_WEIGHT = 100
CPU_PERIOD = 100_000


def is_v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


@dataclass(frozen=True)
class Limits:
    cpu: float  # cores (fractions allowed); 0 = no CPU cap
    memory: int  # bytes
    pids: int = 4096
    io_weight: int = IO_WEIGHT  # proportional share of block IO (where the scheduler has one)
    cpu_baseline: float = 0.0  # cores guaranteed when the host is busy (the CPU weight); 0: default


def cpu_weight_v2(baseline: float) -> int:
    """cpu.weight for a baseline in cores: 100 (the default) per core, 1 to 10000."""
    return max(1, min(10000, round(baseline * 100)))


def cpu_shares_v1(baseline: float) -> int:
    """cpu.shares for a baseline in cores: 1024 (the default) per core, at least 2."""
    return max(2, round(baseline * 1024))


class Group:
    """The cgroup ``<parent>/<name>`` in every hierarchy Corral uses."""

    def __init__(self, parent: str, name: str) -> None:
        self.rel = Path(parent) / name
        self.parent = Path(parent)

    def dirs(self) -> list[Path]:
        if is_v2():
            return [ROOT / self.rel]
        return [ROOT / c / self.rel for c in V1_CONTROLLERS if (ROOT / c).is_dir()]

    def available(self) -> bool:
        return (ROOT.is_dir() and os.access(ROOT, os.W_OK)) or any(
            d.parent.exists() for d in self.dirs()
        )

    def create(self, limits: Limits) -> None:
        if is_v2():
            self._create_v2(limits)
        else:
            self._create_v1(limits)

    def _create_v2(self, limits: Limits) -> None:
        # enable the controllers down the path, then make the leaf
        path = ROOT
        for part in self.rel.parts:
            for controller in V2_CONTROLLERS:  # one by one: a missing one spoils no other
                with contextlib.suppress(OSError):
                    (path / "cgroup.subtree_control").write_text(f"+{controller}")
            path = path / part
            path.mkdir(exist_ok=True)
        quota = "max" if limits.cpu <= 0 else str(int(limits.cpu * CPU_PERIOD))
        _write(path / "cpu.max", f"{quota} {CPU_PERIOD}")
        if limits.cpu_baseline > 0:
            _write(path / "cpu.weight", str(cpu_weight_v2(limits.cpu_baseline)))
        _write(path / "memory.max", str(limits.memory))
        if (path / "memory.swap.max").exists():  # guests never push the host into swap
            with contextlib.suppress(OSError):
                _write(path / "memory.swap.max", "0")
        _write(path / "pids.max", str(limits.pids))
        for name in ("io.weight", "io.bfq.weight"):
            if (path / name).exists():
                with contextlib.suppress(OSError):
                    _write(path / name, f"default {limits.io_weight}")

    def _create_v1(self, limits: Limits) -> None:
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        cpu = ROOT / "cpu" / self.rel
        if cpu.is_dir():
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD))
            quota = -1 if limits.cpu <= 0 else int(limits.cpu * CPU_PERIOD)
            _write(cpu / "cpu.cfs_quota_us", str(quota))
            if limits.cpu_baseline > 0:
                _write(cpu / "cpu.shares", str(cpu_shares_v1(limits.cpu_baseline)))
        mem = ROOT / "memory" / self.rel
        if mem.is_dir():
            _write(mem / "memory.limit_in_bytes", str(limits.memory))
            if (mem / "memory.swappiness").exists():  # guests never push the host into swap
                with contextlib.suppress(OSError):
                    _write(mem / "memory.swappiness", "0")
        pids = ROOT / "pids" / self.rel
        if pids.is_dir():
            _write(pids / "pids.max", str(limits.pids))
        blkio = ROOT / "blkio" / self.rel
        for name in ("blkio.weight", "blkio.bfq.weight"):
            if (blkio / name).exists():
                with contextlib.suppress(OSError):
                    _write(blkio / name, str(limits.io_weight))
        devices = ROOT / "devices" / self.rel
        if devices.is_dir() and not self.pids():
            _write(devices / "devices.deny", "a")
            for rule in DEVICE_ALLOW:
                _write(devices / "devices.allow", rule)

    def set_cpu_quota(self, cores: float) -> None:
        """Change the CPU quota of the running group (CPU credits: ceiling or baseline)."""
        if is_v2():
            _write(ROOT / self.rel / "cpu.max", f"{int(cores * CPU_PERIOD)} {CPU_PERIOD}")
        else:
            _write(ROOT / "cpu" / self.rel / "cpu.cfs_quota_us", str(int(cores * CPU_PERIOD)))

    def cpu_quota(self) -> float | None:
        """The CPU quota now (cores), None when unlimited or unreadable."""
        with contextlib.suppress(OSError, ValueError):
            if is_v2():
                quota, period = (ROOT / self.rel / "cpu.max").read_text().split()
                return None if quota == "max" else int(quota) / int(period)
            quota_us = int((ROOT / "cpu" / self.rel / "cpu.cfs_quota_us").read_text())
            period_us = int((ROOT / "cpu" / self.rel / "cpu.cfs_period_us").read_text())
            return None if quota_us < 0 else quota_us / period_us
        return None

    def proc_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs()]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.proc_files():
            with contextlib.suppress(OSError):
                out.update(int(x) for x in f.read_text().split())
        return sorted(out)

    def remove(self) -> None:
        for d in self.dirs():
            with contextlib.suppress(OSError):
                d.rmdir()

    def memory_usage(self) -> int | None:
        for f in (
            ROOT / self.rel / "memory.current",
            ROOT / "memory" / self.rel / "memory.usage_in_bytes",
        ):
            with contextlib.suppress(OSError, ValueError):
                return int(f.read_text())
        return None

    def preexec(self) -> list[int]:
        """Open the ``cgroup.procs`` files now; the child writes its pid into each (``join``)."""
        return [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in self.proc_files()]


def confinement() -> dict[str, str]:
    """What an instance's cgroup limits on this host (for `corral doctor` and `corral show`)."""
    if is_v2():
        have = (ROOT / "cgroup.controllers").read_text().split()
        used = [c for c in V2_CONTROLLERS if c in have]
        return {
            "cgroup": f"v2 ({', '.join(used)})",
            "devices": "jail device nodes only (v2 has no devices file)",
            "block_io": "io group, weight " + str(IO_WEIGHT) if "io" in used else "not limited",
        }
    used = [c for c in V1_CONTROLLERS if (ROOT / c).is_dir()]
    blkio = ROOT / "blkio"
    weighted = any((blkio / n).exists() for n in ("blkio.weight", "blkio.bfq.weight"))
    return {
        "cgroup": f"v1 ({', '.join(used)})",
        "devices": "denied but null, zero, random, urandom, net/tun, kvm"
        if "devices" in used
        else "jail device nodes only (no devices controller)",
        "block_io": (f"blkio group, weight {IO_WEIGHT}" if weighted else "blkio group (accounted)")
        if "blkio" in used
        else "not limited",
    }


def join(fds: list[int]) -> None:
    """Called in the child between fork and exec."""
    pid = str(os.getpid()).encode()
    for fd in fds:
        os.write(fd, pid)


def _write(path: Path, value: str) -> None:
    path.write_text(value)
