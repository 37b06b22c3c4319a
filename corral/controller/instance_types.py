"""Corral's instance types: vCPUs, the share of a host core they may use (enforced by the node's
cgroup CPU quota, so "0.2 of a core" is real), and memory. A few AWS names are kept as aliases
with Corral's own sizes so that scripts written for EC2 run unchanged."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def cores(self) -> float:
        return self.cpu_limit or float(self.vcpus)

    @property
    def memory(self) -> int:
        return self.memory_mib << 20


CATALOG: dict[str, InstanceType] = {
    t.name: t
    for t in (
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
