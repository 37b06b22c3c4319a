"""CPU credits for burstable instances, kept by the node that runs them.

An instance with a baseline (e.g. 0.2 of a core) and a ceiling (e.g. 0.5) earns credits while
it uses less than its baseline and spends them above it, as AWS's burstable types do. The
ceiling is the cgroup CPU quota, the baseline its weight (its share when the host is busy).
When the balance runs out a ``standard`` instance is held to its baseline (the quota lowered)
until it has earned credits again; an ``unlimited`` one bursts on, and what it uses above its
baseline without credits is counted as surplus (core-seconds, for the bill).

A credit here is one core-second. The balance starts full (``maximum``, from the controller:
hours of baseline, ``cpu_credit_max_hours``) and is written to ``credits.json`` in the
instance's directory (atomically) so an agent restart keeps it. CPU use is read from the
instance's cgroup (v2 ``cpu.stat``, v1 ``cpuacct.usage``) or, where neither exists, from the
QEMU process's own counters."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.errors import Invalid, NotFound
from corral.fsutil import atomic_write
from corral.node.driver import cgroups
from corral.node.spec import CreditStatus, InstanceSpec

TICK = 1.0  # seconds between two looks at an instance's CPU use
MODES = ("standard", "unlimited")


@dataclass
class Bucket:
    baseline: float  # cores
    ceiling: float  # cores
    maximum: float  # core-seconds the balance holds at most
    balance: float
    mode: str = "standard"
    surplus: float = 0.0  # core-seconds used above the baseline with no credits (unlimited)
    held: bool = False  # held to the baseline (standard, out of credits)
    last_usage: float | None = None  # the CPU counter at the last tick (core-seconds)
    last_time: float | None = None

    def quota(self) -> float:
        """The cgroup CPU quota (cores) this bucket wants now."""
        return self.baseline if self.held else self.ceiling

    def tick(self, usage: float, now: float) -> float:
        """Account the CPU used since the last tick (``usage`` is the counter in
        core-seconds, ``now`` a monotonic clock) and return the quota to apply."""
        if self.last_usage is None or self.last_time is None or usage < self.last_usage:
            self.last_usage, self.last_time = usage, now  # first look, or the counter reset
            return self.quota()
        elapsed = max(0.0, now - self.last_time)
        used = usage - self.last_usage
        self.last_usage, self.last_time = usage, now
        net = self.baseline * elapsed - used
        if net >= 0:
            self.balance = min(self.maximum, self.balance + net)
        elif self.balance >= -net:
            self.balance -= -net
        else:
            if self.mode == "unlimited":
                self.surplus += -net - self.balance
            self.balance = 0.0
        if self.balance < 1e-9:  # a float's dust is no credit
            self.balance = 0.0
        if self.mode == "unlimited":
            self.held = False
        elif self.balance <= 0.0:
            self.held = True
        elif self.held and self.balance >= min(self.maximum, self.baseline * TICK):
            self.held = False  # earned a tick's worth back: burst again
        return self.quota()

    def status(self) -> dict[str, float | str | bool]:
        return {
            "mode": self.mode,
            "baseline": self.baseline,
            "ceiling": self.ceiling,
            "balance": round(self.balance, 3),
            "maximum": self.maximum,
            "surplus": round(self.surplus, 3),
            "held": self.held,
            "quota": self.quota(),
        }


def load(path: Path, baseline: float, ceiling: float, maximum: float, mode: str) -> Bucket:
    """The bucket saved in ``path`` with the spec's current terms, or a full new one."""
    balance, surplus, held = maximum, 0.0, False
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(path.read_text())
        balance = min(maximum, float(data["balance"]))
        surplus = float(data.get("surplus", 0.0))
        held = bool(data.get("held", False))
    return Bucket(baseline, ceiling, maximum, balance, mode, surplus, held and mode == "standard")


def save(path: Path, b: Bucket) -> None:
    data = asdict(b)
    data.pop("last_usage")
    data.pop("last_time")
    atomic_write(path, json.dumps(data))


def cpu_usage(group: cgroups.Group, pid: int | None) -> float | None:
    """Core-seconds the instance used so far: its cgroup's counter, else its QEMU's."""
    rel = group.rel
    with contextlib.suppress(OSError, ValueError):
        for line in (cgroups.ROOT / rel / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    with contextlib.suppress(OSError, ValueError):
        return int((cgroups.ROOT / "cpuacct" / rel / "cpuacct.usage").read_text()) / 1e9
    if pid is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
            return ticks / os.sysconf("SC_CLK_TCK")
    return None


class Governor:
    """The node's credit keeper: every ``TICK`` it accounts each running burstable instance's
    CPU use and sets its quota (ceiling or baseline). ``instance_dir(iid)`` is where its
    ``spec.json`` and ``credits.json`` live; ``group(iid)`` its cgroup."""

    def __init__(
        self, instance_dir: Callable[[str], Path], group: Callable[[str], cgroups.Group]
    ) -> None:
        self.instance_dir, self.group = instance_dir, group
        self.buckets: dict[str, Bucket | None] = {}  # None: not burstable
        self.applied: dict[str, float] = {}

    def _spec(self, iid: str) -> InstanceSpec | None:
        with contextlib.suppress(OSError, ValueError):
            return InstanceSpec.model_validate_json(
                (self.instance_dir(iid) / "spec.json").read_text()
            )
        return None

    def bucket(self, iid: str) -> Bucket | None:
        if iid not in self.buckets:
            spec = self._spec(iid)
            ceiling = (spec.cpu_limit or float(spec.cpus)) if spec else 0.0
            if spec is None or not 0 < spec.cpu_baseline < ceiling:
                self.buckets[iid] = None
            else:
                self.buckets[iid] = load(
                    self.instance_dir(iid) / "credits.json",
                    spec.cpu_baseline,
                    ceiling,
                    spec.cpu_credit_max,
                    spec.cpu_credit_mode,
                )
        return self.buckets[iid]

    def forget(self, iid: str) -> None:
        """Read the instance's terms again at the next tick (it is starting with a new spec)."""
        self.buckets.pop(iid, None)
        self.applied.pop(iid, None)

    def tick(self, running: dict[str, int | None], now: float) -> None:
        """``running``: instance id -> QEMU pid of every running instance."""
        for iid in list(self.buckets):
            if iid not in running:
                self.applied.pop(iid, None)
        for iid, pid in running.items():
            b = self.bucket(iid)
            if b is None:
                continue
            usage = cpu_usage(self.group(iid), pid)
            if usage is None:
                continue
            quota = b.tick(usage, now)
            if self.applied.get(iid) != quota:
                with contextlib.suppress(OSError):
                    self.group(iid).set_cpu_quota(quota)
                    self.applied[iid] = quota
            with contextlib.suppress(OSError):
                save(self.instance_dir(iid) / "credits.json", b)

    def surplus(self, iid: str) -> float | None:
        """Core-seconds the instance used above its baseline with no credits (unlimited mode)
        on this node so far; None: not burstable."""
        b = self.bucket(iid)
        return None if b is None else b.surplus

    def status(self, iid: str) -> CreditStatus | None:
        b = self.bucket(iid)
        return None if b is None else CreditStatus.model_validate(b.status())

    def set_mode(self, iid: str, mode: str) -> CreditStatus | None:
        """Change the mode now and in the instance's spec file (so a restart keeps it)."""
        if mode not in MODES:
            raise Invalid(f"CPU credit mode {mode!r} must be standard or unlimited", field="mode")
        spec = self._spec(iid)
        if spec is None:
            raise NotFound(f"instance {iid} is not on this node", resource="instance")
        atomic_write(
            self.instance_dir(iid) / "spec.json",
            spec.model_copy(update={"cpu_credit_mode": mode}).model_dump_json(indent=2),
        )
        b = self.bucket(iid)
        if b is not None:
            b.mode = mode
            if mode == "unlimited":
                b.held = False
        return self.status(iid)
