"""Cleanup and consistency: tags go with what they describe (a deregistered image, a deleted
snapshot, a released address); terminated instances stay visible for an hour and then go;
DescribeAddresses shows the domain asked for at allocation."""

from __future__ import annotations

import datetime as dt

from corral.store.models import utcnow
from tests.unit.ec2.conftest import World

TAG = [{"Key": "team", "Value": "blue"}]


async def tags_of(world: World, rid: str) -> list[str]:
    out = await world.admin.call("DescribeTags", Filters=[{"Name": "resource-id", "Values": [rid]}])
    return [t["Key"] for t in out["Tags"]]


async def test_tags_go_with_a_deregistered_image_and_a_deleted_snapshot(world: World) -> None:
    ec2 = world.admin
    iid = (await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    await world.settle()
    ami = (await ec2.call("CreateImage", InstanceId=iid, Name="tagged", NoReboot=True))["ImageId"]
    await world.settle()
    snap = (await ec2.call("DescribeImages", ImageIds=[ami]))["Images"][0]["BlockDeviceMappings"][
        0
    ]["Ebs"]["SnapshotId"]
    await ec2.call("CreateTags", Resources=[ami, snap], Tags=TAG)
    assert await tags_of(world, ami) == ["team"]
    await ec2.call("DeregisterImage", ImageId=ami)
    assert await tags_of(world, ami) == []
    assert await tags_of(world, snap) == ["team"]  # the snapshot stays, as on AWS, tags too
    await ec2.call("DeleteSnapshot", SnapshotId=snap)
    await world.settle()
    assert await tags_of(world, snap) == []


async def test_tags_go_with_a_released_address(world: World) -> None:
    ec2 = world.admin
    alloc = (await ec2.call("AllocateAddress", Domain="vpc"))["AllocationId"]
    await ec2.call("CreateTags", Resources=[alloc], Tags=TAG)
    assert await tags_of(world, alloc) == ["team"]
    await ec2.call("ReleaseAddress", AllocationId=alloc)
    assert await tags_of(world, alloc) == []


async def test_addresses_show_the_domain_asked_for(world: World) -> None:
    ec2 = world.admin
    std = await ec2.call("AllocateAddress", Domain="standard")
    vpc = await ec2.call("AllocateAddress")
    assert (std["Domain"], vpc["Domain"]) == ("standard", "vpc")
    out = await ec2.call("DescribeAddresses")
    assert {a["AllocationId"]: a["Domain"] for a in out["Addresses"]} == {
        std["AllocationId"]: "standard",
        vpc["AllocationId"]: "vpc",
    }
    only = await ec2.call("DescribeAddresses", Filters=[{"Name": "domain", "Values": ["standard"]}])
    assert [a["AllocationId"] for a in only["Addresses"]] == [std["AllocationId"]]
    await ec2.fails("InvalidParameterValue", "AllocateAddress", Domain="classic")


async def test_terminated_instances_are_visible_for_an_hour_then_gone(world: World) -> None:
    ec2 = world.admin
    made = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=2, MaxCount=2)
    await world.settle()
    old, recent = (i["InstanceId"] for i in made["Instances"])
    await ec2.call("CreateTags", Resources=[old], Tags=TAG)
    await ec2.call("TerminateInstances", InstanceIds=[old, recent])
    await world.settle()
    await world.ctrl.instances._set(old, terminated_at=utcnow() - dt.timedelta(minutes=61))
    await world.ctrl.instances._set(recent, terminated_at=utcnow() - dt.timedelta(minutes=59))
    assert await world.ctrl.purge_terminated() == 1
    await ec2.fails("InvalidInstanceID.NotFound", "DescribeInstances", InstanceIds=[old])
    desc = await ec2.call("DescribeInstances", InstanceIds=[recent])
    assert desc["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    assert await tags_of(world, old) == []
