"""RunInstances' BlockDeviceMapping on the fake node: blank volumes and volumes from a
snapshot made for the instance before it first starts, DeleteOnTermination for each (the
root's too: false keeps an EBS root volume), NoDevice, volume tags; and refusals that leave
nothing behind."""

from __future__ import annotations

from typing import Any

from tests.unit.ec2.conftest import World


async def _snapshot(world: World) -> str:
    ec2 = world.admin
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=2))["VolumeId"]
    await world.settle()
    snap = (await ec2.call("CreateSnapshot", VolumeId=vol))["SnapshotId"]
    await world.settle()
    return str(snap)


async def _volumes(world: World, iid: str) -> dict[str, Any]:
    f = [{"Name": "attachment.instance-id", "Values": [iid]}]
    out = await world.admin.call("DescribeVolumes", Filters=f)
    return {v["Attachments"][0]["Device"]: v for v in out["Volumes"]}


async def test_launch_makes_blank_and_snapshot_volumes(world: World) -> None:
    ec2 = world.admin
    snap = await _snapshot(world)
    out = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        BlockDeviceMappings=[
            {
                "DeviceName": "/dev/sdb",
                "Ebs": {"VolumeSize": 3, "VolumeType": "gp3", "DeleteOnTermination": False},
            },
            {"DeviceName": "/dev/sdc", "Ebs": {"SnapshotId": snap}},
            {"DeviceName": "/dev/sdd", "NoDevice": ""},
        ],
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "app", "Value": "db"}]}],
    )
    iid = out["Instances"][0]["InstanceId"]
    await world.settle()
    vols = await _volumes(world, iid)
    assert sorted(vols) == ["/dev/sdb", "/dev/sdc"]
    b, c = vols["/dev/sdb"], vols["/dev/sdc"]
    assert (b["Size"], b["VolumeType"], b["Attachments"][0]["DeleteOnTermination"]) == (
        3,
        "gp3",
        False,
    )
    assert (c["Size"], c["SnapshotId"], c["Attachments"][0]["DeleteOnTermination"]) == (
        2,
        snap,
        True,
    )
    assert {"Key": "app", "Value": "db"} in b["Tags"] and {"Key": "app", "Value": "db"} in c["Tags"]
    assert b["State"] == c["State"] == "in-use"
    # made on the node before the instance started, and given to it
    assert world.node.specs[iid].volumes and {v.id for v in world.node.specs[iid].volumes} == {
        b["VolumeId"],
        c["VolumeId"],
    }
    desc = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    shown = {m["DeviceName"] for m in desc["Instances"][0]["BlockDeviceMappings"]}
    assert shown == {"/dev/sdb", "/dev/sdc"}
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    left = await ec2.call("DescribeVolumes", VolumeIds=[b["VolumeId"]])
    assert left["Volumes"][0]["State"] == "available"  # DeleteOnTermination false: kept
    await ec2.fails("InvalidVolume.NotFound", "DescribeVolumes", VolumeIds=[c["VolumeId"]])


async def test_root_delete_on_termination_false_keeps_an_ebs_root(world: World) -> None:
    ec2 = world.admin
    src = (await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    await world.settle()
    ami = (await ec2.call("CreateImage", InstanceId=src, Name="ebs", NoReboot=True))["ImageId"]
    await world.settle()
    iid = (
        await ec2.call(
            "RunInstances",
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"DeleteOnTermination": False}}
            ],
        )
    )["Instances"][0]["InstanceId"]
    await world.settle()
    root = (await _volumes(world, iid))["/dev/sda1"]
    assert root["Attachments"][0]["DeleteOnTermination"] is False
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    kept = await ec2.call("DescribeVolumes", VolumeIds=[root["VolumeId"]])
    assert kept["Volumes"][0]["State"] == "available"


async def test_refused_mappings_leave_nothing_behind(world: World) -> None:
    ec2 = world.admin
    base: dict[str, Any] = {"ImageId": world.image_id, "MinCount": 1, "MaxCount": 1}
    cases = {
        # the built-in image keeps its root on the instance: no root volume to keep
        "InvalidParameterCombination": [
            {"DeviceName": "/dev/sda1", "Ebs": {"DeleteOnTermination": False}}
        ],
        "InvalidBlockDeviceMapping": [{"DeviceName": "/dev/sda1", "NoDevice": ""}],
        "InvalidSnapshot.NotFound": [
            {"DeviceName": "/dev/sdb", "Ebs": {"SnapshotId": "snap-1234abcd"}}
        ],
        "MissingParameter": [{"DeviceName": "/dev/sdb", "Ebs": {"VolumeType": "gp3"}}],
        "UnsupportedOperation": [
            {"DeviceName": "/dev/sdb", "Ebs": {"VolumeSize": 1, "Encrypted": True}}
        ],
    }
    for code, mappings in cases.items():
        await ec2.fails(code, "RunInstances", **base, BlockDeviceMappings=mappings)
    assert (await ec2.call("DescribeInstances"))["Reservations"] == []
    assert (await ec2.call("DescribeVolumes"))["Volumes"] == []


async def test_volume_tags_with_no_volume_made_tag_nothing(world: World) -> None:
    """Ansible's ec2_instance sends TagSpecification of type volume with every name or tag;
    an image that keeps its root on the instance makes no volume, so they tag nothing (as AWS
    does for an instance-store image) and the launch goes ahead."""
    ec2 = world.admin
    r = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "ans-vm"}]},
            {"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": "ans-vm"}]},
        ],
    )
    iid = r["Instances"][0]["InstanceId"]
    assert r["Instances"][0]["Tags"] == [{"Key": "Name", "Value": "ans-vm"}]
    assert (await ec2.call("DescribeVolumes"))["Volumes"] == []
    tags = (await ec2.call("DescribeTags"))["Tags"]
    assert [(t["ResourceId"], t["Key"]) for t in tags] == [(iid, "Name")]
