"""The first calls a user makes work end to end through signing, dispatch and parsing."""

from __future__ import annotations

from tests.unit.ec2.conftest import World


async def test_describe_regions_names_corrals_region(world: World) -> None:
    out = await world.admin.call("DescribeRegions")
    assert [r["RegionName"] for r in out["Regions"]] == ["corral-1"]


async def test_run_describe_terminate(world: World) -> None:
    ec2 = world.admin
    out = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=2)
    assert len(out["Instances"]) == 2
    assert {i["State"]["Name"] for i in out["Instances"]} == {"pending"}
    await world.settle()
    desc = await ec2.call("DescribeInstances")
    states = [i["State"]["Name"] for r in desc["Reservations"] for i in r["Instances"]]
    assert states == ["running", "running"]
    ids = [i["InstanceId"] for i in out["Instances"]]
    term = await ec2.call("TerminateInstances", InstanceIds=ids)
    assert {t["CurrentState"]["Name"] for t in term["TerminatingInstances"]} == {"shutting-down"}
