"""Placement over EC2: InsufficientInstanceCapacity with the scheduler's reasons, placement
groups (create, describe, delete, spread honoured at RunInstances), Placement.* checked."""

from __future__ import annotations

from tests.unit.ec2.conftest import World


async def _run(world: World, **params: object) -> dict:  # type: ignore[type-arg]
    return await world.admin.call(
        "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, **params
    )


async def test_no_capacity_is_insufficient_instance_capacity_with_the_reasons(
    world: World,
) -> None:
    err = await world.admin.fails(
        "InsufficientInstanceCapacity",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=5,
        MaxCount=5,
        InstanceType="cr1.large",
    )
    assert "1 node: 1 lacks 2 GiB free memory" in err.message


async def test_placement_groups_are_created_described_and_deleted(world: World) -> None:
    ec2 = world.admin
    made = await ec2.call(
        "CreatePlacementGroup",
        GroupName="web",
        Strategy="spread",
        TagSpecifications=[
            {"ResourceType": "placement-group", "Tags": [{"Key": "team", "Value": "a"}]}
        ],
    )
    group = made["PlacementGroup"]
    assert group["GroupName"] == "web" and group["Strategy"] == "spread"
    assert group["GroupId"].startswith("pg-") and group["State"] == "available"
    await ec2.call("CreatePlacementGroup", GroupName="db", Strategy="cluster")
    await ec2.fails("InvalidPlacementGroup.Duplicate", "CreatePlacementGroup", GroupName="web")
    await ec2.fails(
        "InvalidParameterValue", "CreatePlacementGroup", GroupName="p", Strategy="partition"
    )
    listed = (await ec2.call("DescribePlacementGroups"))["PlacementGroups"]
    assert sorted(g["GroupName"] for g in listed) == ["db", "web"]
    only = await ec2.call(
        "DescribePlacementGroups", Filters=[{"Name": "tag:team", "Values": ["a"]}]
    )
    assert [g["GroupName"] for g in only["PlacementGroups"]] == ["web"]
    await ec2.fails("InvalidPlacementGroup.Unknown", "DescribePlacementGroups", GroupNames=["x"])
    await ec2.call("DeletePlacementGroup", GroupName="db")
    await ec2.fails("InvalidPlacementGroup.Unknown", "DeletePlacementGroup", GroupName="db")
    other = await world.account("other")
    assert (await other.call("DescribePlacementGroups"))["PlacementGroups"] == []


async def test_a_spread_group_takes_one_instance_per_node_and_says_so(world: World) -> None:
    ec2 = world.admin
    await ec2.call("CreatePlacementGroup", GroupName="web", Strategy="spread")
    first = (await _run(world, Placement={"GroupName": "web"}))["Instances"][0]
    assert first["Placement"]["GroupName"] == "web"
    assert first["Placement"]["AvailabilityZone"] == "corral-1a"
    err = await ec2.fails(
        "InsufficientInstanceCapacity",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"GroupName": "web"},
    )
    assert "1 node: 1 already holds an instance of placement group web (spread" in err.message
    await ec2.fails("InvalidPlacementGroup.InUse", "DeletePlacementGroup", GroupName="web")
    await ec2.call("TerminateInstances", InstanceIds=[first["InstanceId"]])
    await world.settle()
    await _run(world, Placement={"GroupName": "web"})  # its place is free again


async def test_placement_zone_tenancy_and_unknown_groups_are_checked(world: World) -> None:
    await _run(world, Placement={"AvailabilityZone": "corral-1a"})
    err = await world.admin.fails(
        "InvalidParameterValue",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "corral-1z"},
    )
    assert "availability zone corral-1z does not exist" in err.message
    await world.admin.fails(
        "InvalidParameterValue",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"Tenancy": "dedicated"},
    )
    await world.admin.fails(
        "InvalidPlacementGroup.Unknown",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"GroupName": "nope"},
    )
    await world.admin.fails(  # a dedicated host is AWS's, not Corral's: refused by name
        "UnsupportedOperation",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"HostId": "h-0123456789abcdef0"},
    )
