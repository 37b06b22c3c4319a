"""Corral's instance types: vCPUs, the share of a host core they may use (enforced by the node's
cgroup CPU quota, so "0.2 of a core" is real), and memory. A few AWS names are kept as aliases
with Corral's own sizes so that scripts written for EC2 run unchanged."""

from __future__ import annotations

from dataclasses import dataclass, replace

from corral.errors import Invalid

DEFAULT = "cr1.micro"


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    cpu_limit: float  # host cores the vCPUs may use together; 0 = one per vCPU
    memory_mib: int
    burstable: bool = False
    description: str = ""
    # cores it may use for ever; below cpu_limit it bursts on CPU credits (node/credits.py)
    baseline: float = 0.0
    # network (node/net/shaping.py): sustained Mbit/s from and to the guest, the rate a full
    # burst bucket is spent at, and the bucket (MiB); 0 = no cap
    net_out_mbit: float = 0.0
    net_in_mbit: float = 0.0
    net_peak_mbit: float = 0.0
    net_burst_mib: int = 0
    # the root disk's limits (QEMU throttling, as volumes'); 0 = none
    disk_iops: int = 0
    disk_mbps: int = 0
    disk_burst_iops: int = 0
    disk_burst_mbps: int = 0
    disk_burst_seconds: int = 0
    # the block IO weight of its cgroup on the host (where the io controller weighs): 100 for a
    # micro, in proportion to the size
    io_weight: int = 0

    @property
    def cores(self) -> float:
        return self.cpu_limit or float(self.vcpus)

    @property
    def memory(self) -> int:
        return self.memory_mib << 20


# per size: (net out, net in, net peak Mbit/s, burst MiB, disk IOPS, disk MB/s, burst IOPS,
# burst MB/s, burst seconds)
_LIMITS: dict[str, tuple[float, float, float, int, int, int, int, int, int]] = {
    "nano": (50, 100, 1000, 16, 200, 20, 1000, 100, 30),
    "micro": (100, 200, 1000, 32, 400, 40, 2000, 150, 30),
    "small": (250, 500, 2000, 64, 1000, 80, 3000, 200, 30),
    "medium": (500, 1000, 5000, 128, 2000, 125, 4000, 250, 30),
    "large": (1000, 2000, 10000, 256, 3000, 250, 6000, 500, 30),
}
_IO_WEIGHT = {"nano": 50, "micro": 100, "small": 200, "medium": 400, "large": 800}
_SIZE_OF = {"t2.nano": "nano", "t2.micro": "micro", "t3.micro": "micro", "m1.small": "small"}


def _with_limits(t: InstanceType) -> InstanceType:
    size = _SIZE_OF.get(t.name, t.name.rpartition(".")[2])
    lim = _LIMITS.get(size)
    if lim is None:
        return t
    return replace(
        t,
        net_out_mbit=lim[0],
        net_in_mbit=lim[1],
        net_peak_mbit=lim[2],
        net_burst_mib=lim[3],
        disk_iops=lim[4],
        disk_mbps=lim[5],
        disk_burst_iops=lim[6],
        disk_burst_mbps=lim[7],
        disk_burst_seconds=lim[8],
        io_weight=_IO_WEIGHT[size],
    )


CATALOG: dict[str, InstanceType] = {
    t.name: t
    for t in map(
        _with_limits,
        (
            InstanceType("cr1.nano", 1, 0.2, 128, True, "1 vCPU capped at 0.2 of a core, 128 MiB"),
            InstanceType("cr1.micro", 1, 0.5, 256, True, "1 vCPU capped at 0.5 of a core, 256 MiB"),
            InstanceType("cr1.small", 1, 1.0, 512, False, "1 vCPU, a whole core, 512 MiB"),
            InstanceType("cr1.medium", 2, 0.0, 1024, False, "2 vCPUs, 1 GiB"),
            InstanceType("cr1.large", 2, 0.0, 2048, False, "2 vCPUs, 2 GiB"),
            # burstable on CPU credits: the baseline for ever, the ceiling while credits last
            InstanceType(
                "cb1.nano", 1, 0.5, 128, True, "1 vCPU, 0.2 of a core bursting to 0.5, 128 MiB", 0.2
            ),
            InstanceType(
                "cb1.micro", 1, 1.0, 256, True, "1 vCPU, 0.5 of a core bursting to 1, 256 MiB", 0.5
            ),
            # AWS names, with the sizes this Corral gives them
            InstanceType("t2.nano", 1, 0.2, 128, True, "alias sized like cr1.nano"),
            InstanceType("t2.micro", 1, 0.5, 256, True, "alias sized like cr1.micro"),
            InstanceType("t3.micro", 1, 0.5, 256, True, "alias sized like cr1.micro"),
            InstanceType("m1.small", 1, 1.0, 512, False, "alias sized like cr1.small"),
        ),
    )
}


def get(name: str, field: str = "instance_type") -> InstanceType:
    t = CATALOG.get(name)
    if t is None:
        raise Invalid(
            f"instance type {name!r} does not exist; use one of "
            f"{', '.join(CATALOG)} (DescribeInstanceTypes lists them)",
            field=field,
            resource="instance_type",
        )
    return t
