"""Instance actions on the fake node: DryRun, ClientToken, counts and capacity, names, states,
attributes, status, console output."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import func, select

from corral.store.models import Instance
from tests.unit.ec2.conftest import World

pytestmark = pytest.mark.postgres  # also on PostgreSQL


async def _count(world: World) -> int:
    async with world.ctrl.store.read() as s:
        return int(await s.scalar(select(func.count()).select_from(Instance)) or 0)


async def test_dry_run_checks_and_does_nothing(world: World) -> None:
    ec2 = world.admin
    err = await ec2.fails(
        "DryRunOperation",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        DryRun=True,
    )
    assert err.status == 412
    assert await _count(world) == 0
    # a dry run still reports what would fail
    await ec2.fails(
        "InvalidAMIID.NotFound",
        "RunInstances",
        ImageId="ami-0000000000000000a",
        MinCount=1,
        MaxCount=1,
        DryRun=True,
    )
    out = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    iid = out["Instances"][0]["InstanceId"]
    await world.settle()
    await ec2.fails("DryRunOperation", "StopInstances", InstanceIds=[iid], DryRun=True)
    await ec2.fails("DryRunOperation", "TerminateInstances", InstanceIds=[iid], DryRun=True)
    desc = await ec2.call("DescribeInstances", InstanceIds=[iid])
    assert desc["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"


async def test_client_token_makes_run_idempotent(world: World) -> None:
    ec2 = world.admin
    a = await ec2.call(
        "RunInstances", ImageId=world.image_id, MinCount=2, MaxCount=2, ClientToken="tok-1"
    )
    b = await ec2.call(
        "RunInstances", ImageId=world.image_id, MinCount=2, MaxCount=2, ClientToken="tok-1"
    )
    assert a["ReservationId"] == b["ReservationId"]
    assert [i["InstanceId"] for i in a["Instances"]] == [i["InstanceId"] for i in b["Instances"]]
    assert await _count(world) == 2
    assert a["Instances"][0]["ClientToken"] == "tok-1"
    await ec2.fails(
        "IdempotentParameterMismatch",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        ClientToken="tok-1",
        InstanceType="cr1.large",
    )


async def test_counts_are_all_or_nothing_below_min(world: World) -> None:
    ec2 = world.admin  # the fake node has 8 GiB: at most 4 cr1.large
    await ec2.fails(
        "InsufficientInstanceCapacity",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=5,
        MaxCount=6,
        InstanceType="cr1.large",
    )
    assert await _count(world) == 0
    out = await ec2.call(
        "RunInstances", ImageId=world.image_id, MinCount=2, MaxCount=9, InstanceType="cr1.large"
    )
    assert len(out["Instances"]) == 4
    assert len({i["InstanceId"] for i in out["Instances"]}) == 4
    assert [i["AmiLaunchIndex"] for i in out["Instances"]] == [0, 1, 2, 3]


async def test_name_tag_becomes_the_host_name_when_valid_and_free(world: World) -> None:
    ec2 = world.admin
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web-1"}]}]
    a = (
        await ec2.call(
            "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, TagSpecifications=tags
        )
    )["Instances"][0]
    b = (
        await ec2.call(
            "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, TagSpecifications=tags
        )
    )["Instances"][0]
    odd = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "My Web Server"}]}]
    c = (
        await ec2.call(
            "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, TagSpecifications=odd
        )
    )["Instances"][0]
    assert a["PrivateDnsName"].startswith("web-1.")
    assert b["PrivateDnsName"].startswith("tiny-") and c["PrivateDnsName"].startswith("tiny-")
    assert {"Key": "Name", "Value": "My Web Server"} in c["Tags"]


async def test_bad_input_names_the_parameter(world: World) -> None:
    ec2 = world.admin
    err = await ec2.fails(
        "InvalidParameterValue",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.24xlarge",
    )
    assert "m5.24xlarge" in err.message and "cr1.micro" in err.message
    await ec2.fails(
        "InvalidAMIID.Malformed", "RunInstances", ImageId="tiny", MinCount=1, MaxCount=1
    )
    await ec2.fails(
        "InvalidParameterValue", "RunInstances", ImageId=world.image_id, MinCount=3, MaxCount=2
    )
    await ec2.fails(
        "InvalidParameterValue",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "us-east-1a"},
    )
    await ec2.fails(
        "InvalidKeyPair.NotFound",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        KeyName="nope",
    )
    await ec2.fails(
        "InvalidGroup.NotFound",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SecurityGroups=["nope"],
    )
    assert await _count(world) == 0


async def test_lifecycle_states_and_root_size(world: World) -> None:
    ec2 = world.admin
    out = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        UserData=base64.b64encode(b"#!/bin/sh\necho hi\n").decode(),
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 2}}],
    )
    iid = out["Instances"][0]["InstanceId"]
    assert out["Instances"][0]["State"] == {"Code": 0, "Name": "pending"}
    await world.settle()
    assert world.node.specs[iid].disk_size == 2 << 30
    stop = await ec2.call("StopInstances", InstanceIds=[iid], Force=True)
    assert stop["StoppingInstances"][0]["PreviousState"]["Name"] == "running"
    assert stop["StoppingInstances"][0]["CurrentState"]["Name"] == "stopping"
    await world.settle()
    await ec2.call("ModifyInstanceAttribute", InstanceId=iid, InstanceType={"Value": "cr1.small"})
    await ec2.call(
        "ModifyInstanceAttribute", InstanceId=iid, UserData={"Value": b"#!/bin/sh\necho changed\n"}
    )
    attr = await ec2.call("DescribeInstanceAttribute", InstanceId=iid, Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]) == b"#!/bin/sh\necho changed\n"
    start = await ec2.call("StartInstances", InstanceIds=[iid])
    assert start["StartingInstances"][0]["CurrentState"]["Name"] == "pending"
    await world.settle()
    assert world.node.specs[iid].memory == 512 << 20
    assert world.node.specs[iid].cpu_limit == 1.0
    await ec2.fails(
        "IncorrectInstanceState",
        "ModifyInstanceAttribute",
        InstanceId=iid,
        InstanceType={"Value": "cr1.nano"},
    )
    status = await ec2.call("DescribeInstanceStatus", InstanceIds=[iid])
    assert status["InstanceStatuses"][0]["InstanceStatus"]["Status"] == "ok"
    console = await ec2.call("GetConsoleOutput", InstanceId=iid)
    assert base64.b64decode(console["Output"]) == b"fake console\n"
    await ec2.call("RebootInstances", InstanceIds=[iid])
    term = await ec2.call("TerminateInstances", InstanceIds=[iid])
    assert term["TerminatingInstances"][0]["CurrentState"] == {"Code": 32, "Name": "shutting-down"}
    await world.settle()
    # terminated instances stay visible, as on AWS
    desc = await ec2.call("DescribeInstances", InstanceIds=[iid])
    assert desc["Reservations"][0]["Instances"][0]["State"] == {"Code": 48, "Name": "terminated"}
    assert (await ec2.call("DescribeInstanceStatus"))["InstanceStatuses"] == []
    all_ = await ec2.call("DescribeInstanceStatus", IncludeAllInstances=True)
    assert all_["InstanceStatuses"][0]["InstanceState"]["Name"] == "terminated"
    await ec2.fails("IncorrectInstanceState", "StartInstances", InstanceIds=[iid])


async def test_unsupported_instance_attribute(world: World) -> None:
    ec2 = world.admin
    out = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    iid = out["Instances"][0]["InstanceId"]
    err = await ec2.fails(
        "UnsupportedOperation",
        "ModifyInstanceAttribute",
        InstanceId=iid,
        EnaSupport={"Value": True},
    )
    assert "EnaSupport.Value" in err.message
    await ec2.fails(
        "InvalidParameterValue", "DescribeInstanceAttribute", InstanceId=iid, Attribute="colour"
    )


async def test_generated_names_never_clash(world: World) -> None:
    """Five hex digits of 17 clash often among many instances: the name grows instead of the
    launch failing with an internal error."""
    import corral.controller.instances as mod

    ec2 = world.admin
    real_new_id = mod.ids.new_id
    fixed = iter(["i-abcde00000000000" + c for c in "123456789"])
    mod.ids.new_id = lambda kind: next(fixed) if kind == "instance" else real_new_id(kind)
    try:
        out = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=3, MaxCount=3)
    finally:
        mod.ids.new_id = real_new_id
    names = [i["PrivateDnsName"].split(".")[0] for i in out["Instances"]]
    assert len(set(names)) == 3 and names[0] == "tiny-abcde"


async def test_rest_api_takes_an_instance_type_too(world: World) -> None:
    ec2 = world.admin
    headers = {"Authorization": f"Bearer {ec2.key_id}:{ec2.secret}"}
    r = await world.http.post(
        "/v1/instances",
        json={"image": "tiny", "name": "typed", "instance_type": "cr1.nano"},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    inst = r.json()["instance"]
    assert inst["memory"] == 128 << 20 and inst["cpus"] == 1
    await world.settle()
    assert world.node.specs[inst["id"]].cpu_limit == 0.2
    r = await world.http.post(
        "/v1/instances", json={"image": "tiny", "instance_type": "x1"}, headers=headers
    )
    assert r.status_code == 400 and r.json()["error"]["field"] == "instance_type"
    desc = await ec2.call("DescribeInstances", InstanceIds=[inst["id"]])
    assert desc["Reservations"][0]["Instances"][0]["InstanceType"] == "cr1.nano"
