"""CPU credit specifications over EC2: DescribeInstanceCreditSpecifications lists burstable
instances with their mode, ModifyInstanceCreditSpecification switches it (per instance: a
non-burstable one is an unsuccessful item, as on AWS)."""

from __future__ import annotations

from tests.unit.ec2.conftest import World


async def test_ec2_credit_specifications(world: World) -> None:
    ec2 = world.admin
    burst = await ec2.call(
        "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, InstanceType="cb1.nano"
    )
    plain = await ec2.call(
        "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, InstanceType="cr1.small"
    )
    await world.settle()
    bid = burst["Instances"][0]["InstanceId"]
    pid = plain["Instances"][0]["InstanceId"]
    got = await ec2.call("DescribeInstanceCreditSpecifications")
    assert got["InstanceCreditSpecifications"] == [{"InstanceId": bid, "CpuCredits": "standard"}]
    out = await ec2.call(
        "ModifyInstanceCreditSpecification",
        InstanceCreditSpecifications=[
            {"InstanceId": bid, "CpuCredits": "unlimited"},
            {"InstanceId": pid, "CpuCredits": "unlimited"},
        ],
    )
    assert out["SuccessfulInstanceCreditSpecifications"] == [{"InstanceId": bid}]
    bad = out["UnsuccessfulInstanceCreditSpecifications"]
    assert [b["InstanceId"] for b in bad] == [pid]
    assert bad[0]["Error"]["Code"] == "UnsupportedOperation"
    got = await ec2.call("DescribeInstanceCreditSpecifications", InstanceIds=[bid])
    assert got["InstanceCreditSpecifications"][0]["CpuCredits"] == "unlimited"
    await ec2.fails(
        "InvalidInstanceID.NotFound", "DescribeInstanceCreditSpecifications", InstanceIds=[pid]
    )
    await ec2.fails(
        "InvalidParameterValue",
        "ModifyInstanceCreditSpecification",
        InstanceCreditSpecifications=[{"InstanceId": bid, "CpuCredits": "turbo"}],
    )
