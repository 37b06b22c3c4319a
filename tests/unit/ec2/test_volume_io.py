"""Volume types with Iops and Throughput: honoured in CreateVolume and ModifyVolume, shown in
DescribeVolumes, and handed to the node as the disk's throttling (at start, on attach, and at
once on a modification of an attached volume)."""

from __future__ import annotations

import pytest

from corral.controller import volume_io
from corral.errors import Invalid
from tests.unit.ec2.conftest import World

MiB = 1 << 20
ZONE = "corral-1a"


def test_limits_per_volume_type() -> None:
    assert volume_io.limits("standard", 10, None, None) == volume_io.IoLimits()
    assert volume_io.limits("gp2", 10, None, None) == volume_io.IoLimits(100, 3000, 250 * MiB)
    assert volume_io.limits("gp2", 2000, None, None) == volume_io.IoLimits(6000, 0, 250 * MiB)
    assert volume_io.limits("gp3", 10, None, None) == volume_io.IoLimits(3000, 0, 125 * MiB)
    assert volume_io.limits("gp3", 10, 4000, 500) == volume_io.IoLimits(4000, 0, 500 * MiB)
    assert volume_io.limits("io1", 10, 300, None).iops == 300
    with pytest.raises(Invalid, match="more than 50 per GiB"):
        volume_io.check("io1", 2, 500, None)
    with pytest.raises(Invalid, match="Throughput is for gp3"):
        volume_io.check("io1", 10, 100, 200)


async def test_create_describe_attach_and_modify(world: World) -> None:
    ec2 = world.admin
    v = await ec2.call(
        "CreateVolume", AvailabilityZone=ZONE, Size=10, VolumeType="gp3", Iops=4000, Throughput=250
    )
    assert (v["Iops"], v["Throughput"]) == (4000, 250)
    await ec2.fails(
        "MissingParameter", "CreateVolume", AvailabilityZone=ZONE, Size=10, VolumeType="io1"
    )
    await ec2.fails(
        "InvalidParameterCombination",
        "CreateVolume",
        AvailabilityZone=ZONE,
        Size=10,
        VolumeType="gp2",
        Iops=300,
    )
    io1 = await ec2.call("CreateVolume", AvailabilityZone=ZONE, Size=4, VolumeType="io1", Iops=150)
    gp2 = await ec2.call("CreateVolume", AvailabilityZone=ZONE, Size=10, VolumeType="gp2")
    await world.settle()
    got = {x["VolumeId"]: x for x in (await ec2.call("DescribeVolumes"))["Volumes"]}
    assert got[io1["VolumeId"]]["Iops"] == 150
    assert got[gp2["VolumeId"]]["Iops"] == 100 and "Throughput" not in got[gp2["VolumeId"]]

    run = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    iid = run["Instances"][0]["InstanceId"]
    await world.settle()
    await ec2.call("AttachVolume", VolumeId=io1["VolumeId"], InstanceId=iid, Device="/dev/sdf")
    await world.settle()
    assert world.node.io_limits[io1["VolumeId"]] == (150, 0, 1000 * MiB)

    mod = await ec2.call("ModifyVolume", VolumeId=io1["VolumeId"], VolumeType="gp3", Throughput=300)
    m = mod["VolumeModification"]
    assert (m["OriginalVolumeType"], m["OriginalIops"]) == ("io1", 150)
    assert (m["TargetVolumeType"], m["TargetIops"], m["TargetThroughput"]) == ("gp3", 3000, 300)
    assert m["ModificationState"] == "completed"
    # applied at once to the running instance's disk (io1's Iops do not carry over to gp3:
    # gp3's default unless asked)
    assert world.node.io_limits[io1["VolumeId"]] == (3000, 0, 300 * MiB)
    await ec2.fails("InvalidParameterValue", "ModifyVolume", VolumeId=io1["VolumeId"], Size=99)
    await ec2.fails(
        "InvalidParameterCombination", "ModifyVolume", VolumeId=gp2["VolumeId"], Iops=3000
    )
