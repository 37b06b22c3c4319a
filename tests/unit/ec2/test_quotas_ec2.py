"""Quotas over EC2: AWS's codes when a limit is hit, RunInstances launching up to what the
quota allows, DescribeAccountAttributes reporting the account's limits."""

from __future__ import annotations

import pytest

from tests.unit.ec2.conftest import World

pytestmark = pytest.mark.postgres


async def test_ec2_refuses_over_quota_with_aws_codes_and_reports_limits(world: World) -> None:
    ec2 = await world.account("quota-user")
    who = await world.caller(ec2)
    boss = world.ctrl.admin
    assert boss is not None
    for name, value in (
        ("instances", 2),
        ("volumes", 1),
        ("elastic_ips", 1),
        ("security_groups", 1),
    ):
        await world.ctrl.quotas.set(boss, who.account_id, name, value)
    attrs = await ec2.call("DescribeAccountAttributes")
    values = {
        a["AttributeName"]: a["AttributeValues"][0]["AttributeValue"]
        for a in attrs["AccountAttributes"]
    }
    assert values["max-instances"] == "2"
    assert values["max-elastic-ips"] == "1"

    # MinCount 1, MaxCount 5: as EC2, launches what the quota allows
    run = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=5)
    assert len(run["Instances"]) == 2
    fail = await ec2.fails(
        "InstanceLimitExceeded", "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1
    )
    assert "quota instances" in fail.message
    await ec2.call("CreateVolume", Size=1, AvailabilityZone="corral-1a")
    await ec2.fails("VolumeLimitExceeded", "CreateVolume", Size=1, AvailabilityZone="corral-1a")
    await ec2.call("AllocateAddress", Domain="vpc")
    await ec2.fails("AddressLimitExceeded", "AllocateAddress", Domain="vpc")
    # each VPC's default group is not counted: a new VPC (and its default group) is never
    # refused by the quota, and does not use it up
    await ec2.call("CreateSecurityGroup", GroupName="one", Description="d")
    await ec2.call("CreateVpc", CidrBlock="10.70.0.0/16")
    await ec2.fails(
        "SecurityGroupLimitExceeded", "CreateSecurityGroup", GroupName="two", Description="d"
    )
    groups = await ec2.call("DescribeSecurityGroups")
    assert sorted(g["GroupName"] for g in groups["SecurityGroups"]) == ["default", "default", "one"]
    # a dry run over the quota is refused with the quota's code too
    await ec2.fails(
        "InstanceLimitExceeded",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        DryRun=True,
    )
