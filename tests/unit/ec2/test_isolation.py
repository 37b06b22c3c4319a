"""No account sees or changes another's instances, private images, key pairs, security
groups, addresses, volumes, snapshots or tags — over EC2 and over the native REST API."""

from __future__ import annotations

from typing import Any

from tests.unit.ec2.conftest import Ec2, World


async def _own_everything(world: World, ec2: Ec2) -> dict[str, str]:
    iid = (await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    await world.settle()
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1))["VolumeId"]
    await world.settle()
    snap = (await ec2.call("CreateSnapshot", VolumeId=vol))["SnapshotId"]
    ami = (await ec2.call("CreateImage", InstanceId=iid, Name="private"))["ImageId"]
    await world.settle()
    return {
        "instance": iid,
        "volume": vol,
        "snapshot": snap,
        "image": ami,
        "key": (await ec2.call("CreateKeyPair", KeyName="mine"))["KeyPairId"],
        "group": (await ec2.call("CreateSecurityGroup", GroupName="mine", Description="mine"))[
            "GroupId"
        ],
        "eip": (await ec2.call("AllocateAddress"))["AllocationId"],
    }


async def test_accounts_are_isolated_for_every_resource(world: World) -> None:
    alice, bob = await world.account("alice"), await world.account("bob")
    a = await _own_everything(world, alice)
    await _own_everything(world, bob)

    def ids(out: dict[str, Any], key: str, field: str) -> set[str]:
        return {x[field] for x in out[key]}

    # bob lists only his own
    inst = await bob.call("DescribeInstances")
    assert a["instance"] not in {
        i["InstanceId"] for r in inst["Reservations"] for i in r["Instances"]
    }
    assert a["volume"] not in ids(await bob.call("DescribeVolumes"), "Volumes", "VolumeId")
    assert a["snapshot"] not in ids(await bob.call("DescribeSnapshots"), "Snapshots", "SnapshotId")
    assert a["image"] not in ids(await bob.call("DescribeImages"), "Images", "ImageId")
    assert a["key"] not in ids(await bob.call("DescribeKeyPairs"), "KeyPairs", "KeyPairId")
    assert a["group"] not in ids(
        await bob.call("DescribeSecurityGroups"), "SecurityGroups", "GroupId"
    )
    assert a["eip"] not in ids(await bob.call("DescribeAddresses"), "Addresses", "AllocationId")
    assert all(t["ResourceId"] not in a.values() for t in (await bob.call("DescribeTags"))["Tags"])
    # each default group is the account's own
    alice_default = {
        g["GroupId"]
        for g in (await alice.call("DescribeSecurityGroups", GroupNames=["default"]))[
            "SecurityGroups"
        ]
    }
    bob_default = {
        g["GroupId"]
        for g in (await bob.call("DescribeSecurityGroups", GroupNames=["default"]))[
            "SecurityGroups"
        ]
    }
    assert alice_default.isdisjoint(bob_default)

    # asking for alice's by id is "not found", and nothing of hers changes
    await bob.fails("InvalidInstanceID.NotFound", "DescribeInstances", InstanceIds=[a["instance"]])
    await bob.fails("InvalidInstanceID.NotFound", "TerminateInstances", InstanceIds=[a["instance"]])
    await bob.fails("InvalidInstanceID.NotFound", "StopInstances", InstanceIds=[a["instance"]])
    await bob.fails("InvalidInstanceID.NotFound", "GetConsoleOutput", InstanceId=a["instance"])
    await bob.fails(
        "InvalidInstanceID.NotFound",
        "CreateTags",
        Resources=[a["instance"]],
        Tags=[{"Key": "x", "Value": "y"}],
    )
    await bob.fails("InvalidVolume.NotFound", "DeleteVolume", VolumeId=a["volume"])
    await bob.fails(
        "InvalidVolume.NotFound",
        "AttachVolume",
        VolumeId=a["volume"],
        InstanceId=a["instance"],
        Device="/dev/sdf",
    )
    await bob.fails("InvalidSnapshot.NotFound", "DeleteSnapshot", SnapshotId=a["snapshot"])
    await bob.fails(
        "InvalidSnapshot.NotFound",
        "CreateVolume",
        AvailabilityZone="corral-1a",
        SnapshotId=a["snapshot"],
    )
    await bob.fails("InvalidAMIID.NotFound", "DescribeImages", ImageIds=[a["image"]])
    await bob.fails("InvalidAMIID.NotFound", "DeregisterImage", ImageId=a["image"])
    await bob.fails(
        "InvalidAMIID.NotFound", "RunInstances", ImageId=a["image"], MinCount=1, MaxCount=1
    )
    await bob.fails("InvalidKeyPair.NotFound", "DescribeKeyPairs", KeyPairIds=[a["key"]])
    await bob.fails("InvalidGroup.NotFound", "DeleteSecurityGroup", GroupId=a["group"])
    await bob.fails(
        "InvalidGroup.NotFound",
        "AuthorizeSecurityGroupIngress",
        GroupId=a["group"],
        IpProtocol="tcp",
        FromPort=22,
        ToPort=22,
        CidrIp="0.0.0.0/0",
    )
    await bob.fails(
        "InvalidGroup.NotFound",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SecurityGroupIds=[a["group"]],
    )
    await bob.fails("InvalidAllocationID.NotFound", "ReleaseAddress", AllocationId=a["eip"])
    await bob.fails(
        "InvalidAllocationID.NotFound",
        "AssociateAddress",
        AllocationId=a["eip"],
        InstanceId=(await bob.call("DescribeInstances"))["Reservations"][0]["Instances"][0][
            "InstanceId"
        ],
    )
    await bob.fails(
        "InvalidInstanceID.NotFound",
        "AssociateAddress",
        AllocationId=(await bob.call("DescribeAddresses"))["Addresses"][0]["AllocationId"],
        InstanceId=a["instance"],
    )
    # bob's key pair of the same name is his own
    await bob.call("DeleteKeyPair", KeyName="mine")
    assert a["key"] in ids(await alice.call("DescribeKeyPairs"), "KeyPairs", "KeyPairId")
    st = await alice.call("DescribeInstances", InstanceIds=[a["instance"]])
    assert st["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"


async def test_native_rest_api_uses_the_same_accounts(world: World) -> None:
    alice, bob = await world.account("alice"), await world.account("bob")
    iid = (await alice.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    await world.settle()

    def auth(e: Ec2) -> dict[str, str]:
        return {"Authorization": f"Bearer {e.key_id}:{e.secret}"}

    r = await world.http.get(f"/v1/instances/{iid}", headers=auth(alice))
    assert r.status_code == 200 and r.json()["id"] == iid
    r = await world.http.get(f"/v1/instances/{iid}", headers=auth(bob))
    assert r.status_code == 404
    assert (await world.http.get("/v1/instances", headers=auth(bob))).json() == []
    r = await world.http.delete(f"/v1/instances/{iid}", headers=auth(bob))
    assert r.status_code == 404
    # accounts: only an admin creates them; a key is made for one's own account
    r = await world.http.post("/v1/accounts", json={"name": "carol"}, headers=auth(bob))
    assert r.status_code == 403
    r = await world.http.post("/v1/accounts/keys", headers=auth(bob))
    assert r.status_code == 201 and r.json()["account_name"] == "bob"
    r = await world.http.post("/v1/accounts/keys", params={"account": "alice"}, headers=auth(bob))
    assert r.status_code == 403
    admin = world.admin
    r = await world.http.post("/v1/accounts", json={"name": "carol"}, headers=auth(admin))
    assert r.status_code == 201
    carol = Ec2(world.http, r.json()["key"]["access_key_id"], r.json()["key"]["secret_access_key"])
    assert (await carol.call("DescribeInstances"))["Reservations"] == []
