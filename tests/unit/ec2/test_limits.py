"""AWS's limits, not stricter ones: MaxResults clamped where AWS clamps (the AWS CLI sends 1000
to DescribeVolumes and DescribeSnapshots), the short 8-hex-digit ids, NotFound (not Malformed)
for a well-formed id that does not exist, and every filter name AWS documents for each Describe
action Corral has (botocore's documentation of the Filters member is the oracle)."""

from __future__ import annotations

import re

import botocore.session
import pytest

from corral.api.ec2.registry import ACTIONS
from tests.unit.ec2.conftest import World

_MODEL = botocore.session.get_session().get_service_model("ec2")
DESCRIBES = sorted(a for a in ACTIONS if a.startswith("Describe"))


def documented_filters(action: str) -> list[str]:
    """Filter names as botocore's documentation lists them (each ``<li>`` starting with a
    ``<code>`` name; the values listed under one filter are not names)."""
    shape = _MODEL.operation_model(action).input_shape
    member = next((m for k, m in shape.members.items() if k.startswith("Filter")), None)
    if member is None:
        return []
    names = re.findall(r"<li>\s*<p>\s*<code>([^<]+)</code>", member.documentation)
    out = []
    for n in names:
        n = n.replace("&lt;key&gt;", "Owner")
        if n == "tag":
            n = "tag:Owner"
        if re.fullmatch(r"[a-z]+", n) and n in ("informational", "low", "medium", "high"):
            continue
        if n == "critical":
            continue
        out.append(n)
    return out


@pytest.mark.parametrize("action", DESCRIBES)
def test_aws_documents_filters_for_the_action(action: str) -> None:
    # the oracle itself: a Describe action with a Filter member has named filters
    shape = _MODEL.operation_model(action).input_shape
    if any(k.startswith("Filter") for k in shape.members):
        assert documented_filters(action), action


async def test_every_documented_filter_name_is_accepted(world: World) -> None:
    ec2 = world.admin
    await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    await world.settle()
    params = {
        "DescribeImageAttribute": None,
        "DescribeInstanceAttribute": None,
    }
    checked = 0
    for action in DESCRIBES:
        if action in params:
            continue
        for name in documented_filters(action):
            await ec2.call(action, Filters=[{"Name": name, "Values": ["*"]}])
            checked += 1
    assert checked > 300


async def test_describe_volumes_and_snapshots_clamp_max_results(world: World) -> None:
    ec2 = world.admin
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1))["VolumeId"]
    await world.settle()
    out = await ec2.call(
        "DescribeVolumes", MaxResults=1000
    )  # what `aws ec2 describe-volumes` sends
    assert [v["VolumeId"] for v in out["Volumes"]] == [vol]
    await ec2.fails("InvalidParameterValue", "DescribeVolumes", MaxResults=4)
    assert (await ec2.call("DescribeSnapshots", MaxResults=5000))["Snapshots"] == []
    await ec2.fails("InvalidParameterValue", "DescribeSnapshots", MaxResults=4)
    # where AWS refuses, Corral refuses
    await ec2.fails("InvalidParameterValue", "DescribeInstances", MaxResults=1001)
    await ec2.fails("InvalidParameterValue", "DescribeInstanceTypes", MaxResults=101)


@pytest.mark.parametrize(
    ("action", "param", "good", "bad", "code"),
    [
        ("DescribeInstances", "InstanceIds", "i-1234abcd", "i-xyz", "InvalidInstanceID"),
        ("DescribeVolumes", "VolumeIds", "vol-1234abcd", "vol-xyz", "InvalidVolumeID"),
        ("DescribeSnapshots", "SnapshotIds", "snap-1234abcd", "snap-xyz", "InvalidSnapshotID"),
        ("DescribeImages", "ImageIds", "ami-1234abcd", "ami-xyz", "InvalidAMIID"),
    ],
)
async def test_short_ids_are_well_formed_and_missing_ones_not_found(
    world: World, action: str, param: str, good: str, bad: str, code: str
) -> None:
    ec2 = world.admin
    not_found = code.replace("VolumeID", "Volume").replace("SnapshotID", "Snapshot")
    await ec2.fails(f"{not_found}.NotFound", action, **{param: [good]})
    await ec2.fails(f"{not_found}.NotFound", action, **{param: [good[:-8] + "0" * 17]})
    await ec2.fails(f"{code}.Malformed", action, **{param: [bad]})


async def test_well_formed_missing_ids_are_not_found_in_other_actions(world: World) -> None:
    ec2 = world.admin
    await ec2.fails("InvalidVolume.NotFound", "DeleteVolume", VolumeId="vol-1234abcd")
    await ec2.fails("InvalidSnapshot.NotFound", "DeleteSnapshot", SnapshotId="snap-1234abcd")
    await ec2.fails("InvalidInstanceID.NotFound", "TerminateInstances", InstanceIds=["i-1234abcd"])
    await ec2.fails("InvalidGroup.NotFound", "DeleteSecurityGroup", GroupId="sg-1234abcd")


async def test_describe_tags_takes_tag_filters(world: World) -> None:
    ec2 = world.admin
    a = (await ec2.call("CreateSecurityGroup", GroupName="a", Description="a"))["GroupId"]
    b = (await ec2.call("CreateSecurityGroup", GroupName="b", Description="b"))["GroupId"]
    await ec2.call("CreateTags", Resources=[a], Tags=[{"Key": "Owner", "Value": "TeamA"}])
    await ec2.call("CreateTags", Resources=[a], Tags=[{"Key": "Name", "Value": "web"}])
    await ec2.call("CreateTags", Resources=[b], Tags=[{"Key": "Owner", "Value": "TeamB"}])
    out = await ec2.call("DescribeTags", Filters=[{"Name": "tag:Owner", "Values": ["TeamA"]}])
    assert sorted((t["ResourceId"], t["Key"]) for t in out["Tags"]) == [(a, "Name"), (a, "Owner")]


async def test_instance_filters_answer_from_the_instance(world: World) -> None:
    ec2 = world.admin
    made = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=2, MaxCount=2)
    await world.settle()
    second = made["Instances"][1]["InstanceId"]

    async def ids(name: str, value: str) -> list[str]:
        out = await ec2.call("DescribeInstances", Filters=[{"Name": name, "Values": [value]}])
        return [i["InstanceId"] for r in out["Reservations"] for i in r["Instances"]]

    assert await ids("launch-index", "1") == [second]
    assert len(await ids("network-interface.attachment.device-index", "0")) == 2
    assert len(await ids("metadata-options.http-tokens", "optional")) == 2
    assert len(await ids("vpc-id", "vpc-*")) == 2  # the default VPC's (issue 12)
    assert await ids("vpc-id", "vpc-00000000") == []
    assert await ids("spot-instance-request-id", "*") == []
    await ec2.fails(
        "InvalidParameterValue",
        "DescribeInstances",
        Filters=[{"Name": "no-such-filter", "Values": ["x"]}],
    )
