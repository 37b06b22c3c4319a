"""Bad input never makes a 5xx: every action, fed random and half-right parameters, answers
with a 2xx or an EC2 error document with a 4xx status."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

from corral.api.ec2.registry import ACTIONS
from tests.unit.ec2.conftest import World

FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
NAMES = [
    "InstanceId.1",
    "InstanceId.x",
    "ImageId",
    "MinCount",
    "MaxCount",
    "InstanceType",
    "Filter.1.Name",
    "Filter.1.Value.1",
    "Filter.x.Name",
    "MaxResults",
    "NextToken",
    "DryRun",
    "KeyName",
    "PublicKeyMaterial",
    "GroupId",
    "GroupName",
    "GroupDescription",
    "IpPermissions.1.IpProtocol",
    "IpPermissions.1.FromPort",
    "IpPermissions.1.ToPort",
    "IpPermissions.1.IpRanges.1.CidrIp",
    "IpPermissions.1.Groups.1.GroupId",
    "AllocationId",
    "PublicIp",
    "AssociationId",
    "VolumeId",
    "SnapshotId",
    "Size",
    "AvailabilityZone",
    "Device",
    "ResourceId.1",
    "Tag.1.Key",
    "Tag.1.Value",
    "Attribute",
    "Value",
    "UserData",
    "UserData.Value",
    "InstanceType.Value",
    "Name",
    "Description",
    "BlockDeviceMapping.1.DeviceName",
    "BlockDeviceMapping.1.Ebs.VolumeSize",
    "BlockDeviceMapping.1.Ebs.SnapshotId",
    "LaunchPermission.Add.1.UserId",
    "LaunchPermission.Add.1.Group",
    "OperationType",
    "UserId.1",
    "Owner.1",
    "ExecutableBy.1",
    "TagSpecification.1.ResourceType",
    "TagSpecification.1.Tag.1.Key",
    "ClientToken",
    "Placement.AvailabilityZone",
    "SecurityGroupId.1",
    "KeyType",
    "Force",
    "Domain",
    "AttributeName.1",
    "RegionName.1",
    "ZoneName.1",
    "IncludeAllInstances",
]
VALUES = [
    "",
    "x",
    "-1",
    "0",
    "5",
    "99999999999999999999",
    "true",
    "maybe",
    "i-",
    "ami-",
    "i-0123456789abcdef0",
    "ami-0123456789abcdef0",
    "vol-0123456789abcdef0",
    "sg-0123456789abcdef0",
    "snap-0123456789abcdef0",
    "eipalloc-0123456789abcdef0",
    "cr1.micro",
    "t9.huge",
    "tcp",
    "icmp",
    "300",
    "0.0.0.0/0",
    "10.0.0.1/8",
    "/dev/sdf",
    "corral-1a",
    "instance",
    "launchPermission",
    "userData",
    "instanceType",
    "all",
    "self",
    "%%%",
    "é",
    "\x00",
    "a\ufffeb",  # characters XML 1.0 forbids: refused, never echoed
    "\x01",
    "a" * 300,
    "AAAA",
    "tag:Name",
    "instance-state-name",
]


async def test_no_action_answers_5xx_to_bad_input(world: World) -> None:
    rng = random.Random(20261121)
    ec2 = world.admin
    for action in sorted(ACTIONS):
        for _ in range(40):
            params = {"Action": action, "Version": "2016-11-15"}
            for name in rng.sample(NAMES, rng.randint(0, 10)):
                params[name] = rng.choice(VALUES)
            body = urlencode(params).encode()
            resp = await ec2.send(ec2.sign("POST", body, headers=FORM))
            assert resp.status_code < 500, (action, params, resp.content[:300])
            root = ET.fromstring(resp.content)  # every answer parses
            if resp.status_code >= 400:
                code = root.findtext("Errors/Error/Code")
                assert code, (action, params)
    await world.settle()


async def test_half_right_requests_never_5xx(world: World) -> None:
    """Valid required parameters plus random extras: the handlers' deeper paths."""
    ec2 = world.admin
    iid = (await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1))["VolumeId"]
    sg = (await ec2.call("CreateSecurityGroup", GroupName="g", Description="g"))["GroupId"]
    eip = (await ec2.call("AllocateAddress"))["AllocationId"]
    await world.settle()
    snap = (await ec2.call("CreateSnapshot", VolumeId=vol))["SnapshotId"]
    await world.settle()
    base = {
        "RunInstances": {"ImageId": world.image_id, "MinCount": "1", "MaxCount": "1"},
        "DescribeInstances": {"InstanceId.1": iid},
        "StopInstances": {"InstanceId.1": iid},
        "StartInstances": {"InstanceId.1": iid},
        "RebootInstances": {"InstanceId.1": iid},
        "ModifyInstanceAttribute": {"InstanceId": iid},
        "DescribeInstanceAttribute": {"InstanceId": iid, "Attribute": "userData"},
        "GetConsoleOutput": {"InstanceId": iid},
        "CreateImage": {"InstanceId": iid},
        "AttachVolume": {"VolumeId": vol, "InstanceId": iid},
        "DetachVolume": {"VolumeId": vol},
        "CreateSnapshot": {"VolumeId": vol},
        "CreateVolume": {"AvailabilityZone": "corral-1a"},
        "AuthorizeSecurityGroupIngress": {"GroupId": sg},
        "RevokeSecurityGroupEgress": {"GroupId": sg},
        "AssociateAddress": {"AllocationId": eip, "InstanceId": iid},
        "CreateTags": {"ResourceId.1": iid},
        "DeleteTags": {"ResourceId.1": vol},
        "RegisterImage": {"Name": "reg", "BlockDeviceMapping.1.Ebs.SnapshotId": snap},
        "ModifyImageAttribute": {"ImageId": world.image_id},
        "DescribeImageAttribute": {"ImageId": world.image_id},
    }
    rng = random.Random(7)
    for action, required in sorted(base.items()):
        for _ in range(30):
            params = {"Action": action, "Version": "2016-11-15", **required}
            for name in rng.sample(NAMES, rng.randint(1, 5)):
                params.setdefault(name, rng.choice(VALUES))
            body = urlencode(params).encode()
            resp = await ec2.send(ec2.sign("POST", body, headers=FORM))
            assert resp.status_code < 500, (action, params, resp.content[:300])
            ET.fromstring(resp.content)
        await world.settle()
