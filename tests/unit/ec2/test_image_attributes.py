"""Image attributes as AWS names them (Describe/Modify/ResetImageAttribute), and RegisterImage
from any snapshot: with no kernel known, the image boots its disk by firmware."""

from __future__ import annotations

from tests.unit.ec2.conftest import World


async def _image(world: World) -> str:
    ec2 = world.admin
    iid = (await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    await world.settle()
    ami = (await ec2.call("CreateImage", InstanceId=iid, Name="attrs", NoReboot=True))["ImageId"]
    await world.settle()
    return str(ami)


async def test_image_attributes(world: World) -> None:
    ec2 = world.admin
    ami = await _image(world)

    async def attr(name: str) -> object:
        out = await ec2.call("DescribeImageAttribute", ImageId=ami, Attribute=name)
        return out

    assert (await attr("bootMode"))["BootMode"] == {"Value": "legacy-bios"}  # type: ignore[index]
    assert (await attr("kernel")).get("KernelId", {}) == {}  # type: ignore[attr-defined]
    bdm = (await attr("blockDeviceMapping"))["BlockDeviceMappings"]  # type: ignore[index]
    assert bdm[0]["DeviceName"] == "/dev/sda1"
    await ec2.fails("InvalidParameterValue", "DescribeImageAttribute", ImageId=ami, Attribute="x")
    await ec2.call(
        "ModifyImageAttribute", ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]}
    )
    assert (await ec2.call("DescribeImages", ImageIds=[ami]))["Images"][0]["Public"] is True
    await ec2.call("ResetImageAttribute", ImageId=ami, Attribute="launchPermission")
    assert (await ec2.call("DescribeImages", ImageIds=[ami]))["Images"][0]["Public"] is False
    perms = await attr("launchPermission")
    assert perms["LaunchPermissions"] == []  # type: ignore[index]
    err = await ec2.fails(
        "UnsupportedOperation", "ModifyImageAttribute", ImageId=ami, Attribute="kernel", Value="x"
    )
    assert "kernel" in err.message
    await ec2.fails("InvalidParameterValue", "ResetImageAttribute", ImageId=ami, Attribute="kernel")
    await ec2.call(
        "ModifyImageAttribute", ImageId=ami, Attribute="description", Value="a web server"
    )
    assert (await attr("description"))["Description"] == {"Value": "a web server"}  # type: ignore[index]


async def test_register_image_from_any_snapshot_boots_by_firmware(world: World) -> None:
    ec2 = world.admin
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1))["VolumeId"]
    await world.settle()
    snap = (await ec2.call("CreateSnapshot", VolumeId=vol))["SnapshotId"]
    await world.settle()
    ami = (
        await ec2.call(
            "RegisterImage",
            Name="own-loader",
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap}}],
        )
    )["ImageId"]
    await world.settle()
    img = (await ec2.call("DescribeImages", ImageIds=[ami]))["Images"][0]
    assert img["State"] == "available"
    row = await world.ctrl.images.get(await world.caller(ec2), ami)
    manifest = world.ctrl.image_store.get_manifest(row.digest)
    assert manifest.kernel is None and manifest.kind == "imported"  # firmware boots its disk
    iid = (await ec2.call("RunInstances", ImageId=ami, MinCount=1, MaxCount=1))["Instances"][0][
        "InstanceId"
    ]
    await world.settle()
    state = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == "running"
