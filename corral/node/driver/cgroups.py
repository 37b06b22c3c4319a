"""A small cgroupfs layer: one group per instance with its CPU, memory and pid limits.

Handles cgroup v2 (a normal Debian 12 host) and v1 (hosts like our build machines). The QEMU
process joins its group before it execs (see ``preexec``), so no thread escapes the limits."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "memory", "pids")
CPU_PERIOD = 100_000


def is_v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


@dataclass(frozen=True)
class Limits:
    cpu: float  # cores (fractions allowed); 0 = no CPU cap
    memory: int  # bytes
    pids: int = 4096


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
            with contextlib.suppress(OSError):
                (path / "cgroup.subtree_control").write_text("+cpu +memory +pids")
            path = path / part
            path.mkdir(exist_ok=True)
        quota = "max" if limits.cpu <= 0 else str(int(limits.cpu * CPU_PERIOD))
        _write(path / "cpu.max", f"{quota} {CPU_PERIOD}")
        _write(path / "memory.max", str(limits.memory))
        _write(path / "pids.max", str(limits.pids))

    def _create_v1(self, limits: Limits) -> None:
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        cpu = ROOT / "cpu" / self.rel
        if cpu.is_dir():
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD))
            quota = -1 if limits.cpu <= 0 else int(limits.cpu * CPU_PERIOD)
            _write(cpu / "cpu.cfs_quota_us", str(quota))
        mem = ROOT / "memory" / self.rel
        if mem.is_dir():
            _write(mem / "memory.limit_in_bytes", str(limits.memory))
        pids = ROOT / "pids" / self.rel
        if pids.is_dir():
            _write(pids / "pids.max", str(limits.pids))

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


def join(fds: list[int]) -> None:
    """Called in the child between fork and exec."""
    pid = str(os.getpid()).encode()
    for fd in fds:
        os.write(fd, pid)


def _write(path: Path, value: str) -> None:
    path.write_text(value)
