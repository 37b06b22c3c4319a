"""Instance attributes as AWS has them, enforced where Corral can: termination protection
refuses TerminateInstances, a guest power-off follows the shutdown behaviour, a group change
reaches the node's packet filter at once; the rest reported, and changes to what has no
meaning here refused by name."""

from __future__ import annotations

from typing import Any

from tests.unit.ec2.conftest import World


async def _run(world: World, **kw: Any) -> str:
    out = await world.admin.call(
        "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, **kw
    )
    await world.settle()
    return str(out["Instances"][0]["InstanceId"])


async def _attr(world: World, iid: str, attr: str) -> Any:
    out = await world.admin.call("DescribeInstanceAttribute", InstanceId=iid, Attribute=attr)
    key = {
        "groupSet": "Groups",
        "blockDeviceMapping": "BlockDeviceMappings",
        "kernel": "KernelId",
        "ramdisk": "RamdiskId",
    }.get(attr, attr[0].upper() + attr[1:])
    return out.get(key, {})


async def test_termination_protection_is_enforced(world: World) -> None:
    ec2 = world.admin
    iid = await _run(world, DisableApiTermination=True)
    assert await _attr(world, iid, "disableApiTermination") == {"Value": True}
    err = await ec2.fails("OperationNotPermitted", "TerminateInstances", InstanceIds=[iid])
    assert "disableApiTermination" in err.message
    state = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == "running"
    await ec2.call(
        "ModifyInstanceAttribute", InstanceId=iid, DisableApiTermination={"Value": False}
    )
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    # and on again with the Attribute/Value form
    other = await _run(world)
    await ec2.call(
        "ModifyInstanceAttribute", InstanceId=other, Attribute="disableApiTermination", Value="true"
    )
    await ec2.fails("OperationNotPermitted", "TerminateInstances", InstanceIds=[other])


async def test_shutdown_behaviour_terminate_terminates_on_guest_power_off(world: World) -> None:
    ec2 = world.admin
    iid = await _run(
        world, InstanceInitiatedShutdownBehavior="terminate", DisableApiTermination=True
    )
    keep = await _run(world)
    assert await _attr(world, iid, "instanceInitiatedShutdownBehavior") == {"Value": "terminate"}
    world.node.crash(iid, reason="guest-shutdown")
    world.node.crash(keep, reason="guest-shutdown")
    await world.ctrl.reconciler.reconcile_once()
    await world.settle()
    desc = await ec2.call("DescribeInstances", InstanceIds=[iid, keep])
    got = {i["InstanceId"]: i for r in desc["Reservations"] for i in r["Instances"]}
    assert got[iid]["State"]["Name"] == "terminated"
    assert got[iid]["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert got[keep]["State"]["Name"] == "stopped"  # the default behaviour: stop
    # terminating what is gone is not refused by its protection (as in EC2)
    out = await ec2.call("TerminateInstances", InstanceIds=[iid])
    assert out["TerminatingInstances"][0]["CurrentState"]["Name"] == "terminated"
    # changed later, it holds for the next power-off
    await ec2.call("StartInstances", InstanceIds=[keep])
    await world.settle()
    await ec2.call(
        "ModifyInstanceAttribute",
        InstanceId=keep,
        InstanceInitiatedShutdownBehavior={"Value": "terminate"},
    )
    world.node.crash(keep, reason="guest-shutdown")
    await world.ctrl.reconciler.reconcile_once()
    desc = await ec2.call("DescribeInstances", InstanceIds=[keep])
    assert desc["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    await ec2.fails(
        "InvalidParameterValue",
        "ModifyInstanceAttribute",
        InstanceId=keep,
        InstanceInitiatedShutdownBehavior={"Value": "hibernate"},
    )


async def test_group_set_changes_the_groups_of_a_running_instance(world: World) -> None:
    ec2 = world.admin
    iid = await _run(world)
    a = (await ec2.call("CreateSecurityGroup", GroupName="a", Description="a"))["GroupId"]
    b = (await ec2.call("CreateSecurityGroup", GroupName="b", Description="b"))["GroupId"]
    await ec2.call("ModifyInstanceAttribute", InstanceId=iid, Groups=[a, b])
    # in the node's packet filter before the answer
    ports = [p for pol in world.node.policies.values() for p in pol.ports]
    assert [sorted(p.groups) for p in ports if p.instance_id == iid] == [sorted([a, b])]
    assert sorted(g["GroupId"] for g in await _attr(world, iid, "groupSet")) == sorted([a, b])
    inst = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert sorted(g["GroupName"] for g in inst["Instances"][0]["SecurityGroups"]) == ["a", "b"]
    await ec2.fails(
        "InvalidGroup.NotFound", "ModifyInstanceAttribute", InstanceId=iid, Groups=["sg-1234abcd"]
    )


async def test_reported_attributes_and_refusals(world: World) -> None:
    ec2 = world.admin
    iid = await _run(world, Monitoring={"Enabled": True})
    assert await _attr(world, iid, "sourceDestCheck") == {"Value": True}
    await ec2.call("ModifyInstanceAttribute", InstanceId=iid, SourceDestCheck={"Value": False})
    assert await _attr(world, iid, "sourceDestCheck") == {"Value": False}
    inst = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert inst["Instances"][0]["SourceDestCheck"] is False
    assert inst["Instances"][0]["Monitoring"] == {"State": "enabled"}
    await ec2.call("ResetInstanceAttribute", InstanceId=iid, Attribute="sourceDestCheck")
    assert await _attr(world, iid, "sourceDestCheck") == {"Value": True}
    assert await _attr(world, iid, "rootDeviceName") == {"Value": "/dev/sda1"}
    assert await _attr(world, iid, "ebsOptimized") == {"Value": False}
    assert await _attr(world, iid, "productCodes") == []
    assert await _attr(world, iid, "kernel") == {}
    err = await ec2.fails(
        "UnsupportedOperation",
        "ModifyInstanceAttribute",
        InstanceId=iid,
        Attribute="kernel",
        Value="aki-1",
    )
    assert "kernel" in err.message
    await ec2.fails(
        "InvalidParameterCombination",
        "ModifyInstanceAttribute",
        InstanceId=iid,
        SourceDestCheck={"Value": True},
        DisableApiTermination={"Value": True},
    )
    await ec2.fails(
        "IncorrectInstanceState", "ResetInstanceAttribute", InstanceId=iid, Attribute="kernel"
    )


async def test_monitoring_and_password_data(world: World) -> None:
    ec2 = world.admin
    iid = await _run(world)
    out = await ec2.call("MonitorInstances", InstanceIds=[iid])
    assert out["InstanceMonitorings"] == [{"InstanceId": iid, "Monitoring": {"State": "enabled"}}]
    f = [{"Name": "monitoring-state", "Values": ["enabled"]}]
    found = await ec2.call("DescribeInstances", Filters=f)
    assert [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]] == [iid]
    out = await ec2.call("UnmonitorInstances", InstanceIds=[iid])
    assert out["InstanceMonitorings"][0]["Monitoring"] == {"State": "disabled"}
    pw = await ec2.call("GetPasswordData", InstanceId=iid)
    assert pw["InstanceId"] == iid and pw["PasswordData"] == ""
    await ec2.fails("InvalidInstanceID.NotFound", "GetPasswordData", InstanceId="i-1234abcd")


async def test_delete_on_termination_of_an_attached_volume(world: World) -> None:
    ec2 = world.admin
    iid = await _run(world)
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1))["VolumeId"]
    await world.settle()
    await ec2.call("AttachVolume", VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
    await world.settle()
    await ec2.call(
        "ModifyInstanceAttribute",
        InstanceId=iid,
        BlockDeviceMappings=[{"DeviceName": "/dev/vdb", "Ebs": {"DeleteOnTermination": True}}],
    )
    bdm = await _attr(world, iid, "blockDeviceMapping")
    assert [(m["DeviceName"], m["Ebs"]["DeleteOnTermination"]) for m in bdm] == [("/dev/vdb", True)]
    await ec2.fails(
        "InvalidInstanceAttributeValue",
        "ModifyInstanceAttribute",
        InstanceId=iid,
        BlockDeviceMappings=[{"DeviceName": "/dev/vdz", "Ebs": {"DeleteOnTermination": True}}],
    )
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    await ec2.fails("InvalidVolume.NotFound", "DescribeVolumes", VolumeIds=[vol])
