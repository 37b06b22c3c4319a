"""Placement over EC2: InsufficientInstanceCapacity with the scheduler's reasons, placement
groups (create, describe, delete, spread honoured at RunInstances), Placement.* checked."""

from __future__ import annotations

import json

from corral.controller import imds_docs
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


async def test_placement_availability_zone_restricts_the_launch_to_that_zone(
    world: World,
) -> None:
    """Three zones (a node each): RunInstances with Placement.AvailabilityZone lands in that
    zone, DescribeInstances and the instance's metadata say so, and a zone with no room is
    refused with the scheduler's reason rather than placed elsewhere."""
    from corral.node.fake import FakeNode

    ctrl = world.ctrl
    home = ctrl.settings.availability_zone
    for name, zone in (("b", "corral-1b"), ("c", "corral-1c")):
        node_id = await ctrl.add_node(FakeNode(name, images=world.node.images), name, zone=zone)
        net = await ctrl.networks.ensure_default(node_id)  # as a joined node gets at connect
        await ctrl.networks.ensure_on_node(net.id)
    zones = await world.admin.call("DescribeAvailabilityZones")
    assert {z["ZoneName"] for z in zones["AvailabilityZones"]} == {home, "corral-1b", "corral-1c"}
    for zone, node in (("corral-1c", "node-c"), ("corral-1b", "node-b"), (home, "node-fake")):
        for _ in range(2):  # spread would otherwise send the second one elsewhere
            out = await _run(world, Placement={"AvailabilityZone": zone})
            (inst,) = out["Instances"]
            assert inst["Placement"]["AvailabilityZone"] == zone
            await world.settle()
            row = await ctrl.instances.get(await world.caller(world.admin), inst["InstanceId"])
            assert row.node_id == node, (zone, row.node_id)
            described = await world.admin.call(
                "DescribeInstances", InstanceIds=[inst["InstanceId"]]
            )
            got = described["Reservations"][0]["Instances"][0]
            assert got["Placement"]["AvailabilityZone"] == zone
            async with ctrl.store.read() as s:  # what the guest's metadata service says
                asker = await imds_docs.asker(s, row.network_id or "", row.private_ip or "")
            assert asker is not None
            tree = imds_docs.build_tree(asker, ctrl.settings)
            assert tree["meta-data"]["placement"]["availability-zone"] == zone
            identity = json.loads(tree["dynamic"]["instance-identity"]["document"])
            assert identity["availabilityZone"] == zone
    await ctrl.cluster.cordon("c", True)
    err = await world.admin.fails(
        "InsufficientInstanceCapacity",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "corral-1c"},
    )
    assert "cordoned" in err.message and "not in zone corral-1c" in err.message
