"""Disk limits per instance type: the root disk's QEMU throttling (with bursts) and the
cgroup's block IO weight, from the type into the node's spec and onto the host (v1 and v2
cgroup trees as the kernel lays them out where a weighing I/O scheduler exists)."""

from __future__ import annotations

from pathlib import Path

from corral.controller import instance_types
from corral.controller.instances import disk_limits
from corral.controller.service import Controller
from corral.node.driver import cgroups, hotplug
from corral.node.spec import DiskIo
from tests.unit.helpers import admin, finish, req


def test_throttle_arguments_burst_only_above_the_rate() -> None:
    args = hotplug.throttle_args("root-disk", "/q", 200, 20_000_000, 1000, 100_000_000, 30)
    assert args == {
        "id": "/q",
        **{"iops": 200, "iops_rd": 0, "iops_wr": 0},
        **{"bps": 20_000_000, "bps_rd": 0, "bps_wr": 0},
        **{"iops_max": 1000, "iops_max_length": 30, "bps_max": 100_000_000},
        "bps_max_length": 30,
    }
    plain = hotplug.throttle_args("v", "/q", 100, 0, 100, 0)
    assert "iops_max" not in plain and "bps_max" not in plain
    assert hotplug.throttle_args("v", "/q", 0, 0)["iops"] == 0  # zeros lift the limits


def test_each_type_has_root_disk_limits_and_an_io_weight_by_size() -> None:
    nano = disk_limits("cr1.nano")
    assert nano["root_io"] == DiskIo(
        iops=200, bps=20_000_000, iops_burst=1000, bps_burst=100_000_000, burst_seconds=30
    )
    assert nano["io_weight"] == 50
    assert disk_limits("t2.nano") == disk_limits("cb1.nano") == nano
    assert disk_limits("cr1.micro")["io_weight"] == 100
    assert disk_limits(None) == {}  # custom sizes: neither
    weights = [
        instance_types.get(n).io_weight
        for n in ("cr1.nano", "cr1.micro", "cr1.small", "cr1.medium", "cr1.large")
    ]
    assert weights == sorted(weights) and all(10 <= w <= 1000 for w in weights)


async def test_the_spec_sent_to_the_node_carries_them(ctrl: Controller) -> None:
    me = admin(ctrl)
    inst, op = await ctrl.instances.run(me, req(instance_type="cr1.small", name="d1"))
    await finish(ctrl, op)
    _, spec = await ctrl.instances._load(inst.id)
    small = instance_types.get("cr1.small")
    assert spec.root_io is not None and spec.root_io.iops == small.disk_iops
    assert spec.root_io.bps == small.disk_mbps * 1_000_000 and spec.io_weight == 200


def test_the_io_weight_on_cgroup_v2(v2: Path) -> None:
    leaf = v2 / "corral/t/i-1"
    leaf.mkdir(parents=True)
    (leaf / "io.weight").write_text("default 100\n")  # as the kernel makes it
    cgroups.Group("corral/t", "i-1").create(cgroups.Limits(cpu=1, memory=1 << 28, io_weight=50))
    assert (leaf / "io.weight").read_text() == "default 50"


def test_the_io_weight_on_cgroup_v1(v1: Path) -> None:
    blk = v1 / "blkio/corral/t/i-1"
    blk.mkdir(parents=True)
    (blk / "blkio.bfq.weight").write_text("100\n")  # BFQ's, as the kernel makes it
    cgroups.Group("corral/t", "i-1").create(cgroups.Limits(cpu=1, memory=1 << 28, io_weight=800))
    assert (blk / "blkio.bfq.weight").read_text() == "800"
