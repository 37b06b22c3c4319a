"""Key pairs, security groups, elastic addresses, volumes, snapshots, images and tags on the
fake node: their happy paths and their AWS error codes."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.unit.ec2.conftest import World

pytestmark = pytest.mark.postgres


async def _instance(world: World, **kw: object) -> str:
    out = await world.admin.call(
        "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1, **kw
    )
    await world.settle()
    return str(out["Instances"][0]["InstanceId"])


async def test_key_pairs_and_fingerprints(world: World) -> None:
    ec2 = world.admin
    made = await ec2.call("CreateKeyPair", KeyName="k-rsa")
    assert made["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    priv = serialization.load_pem_private_key(made["KeyMaterial"].encode(), None)
    der = priv.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sha1 = ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())
    assert made["KeyFingerprint"] == sha1 and made["KeyPairId"].startswith("key-")
    ed = await ec2.call("CreateKeyPair", KeyName="k-ed", KeyType="ed25519")
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", ed["KeyFingerprint"])
    pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    imp = await ec2.call("ImportKeyPair", KeyName="k-imp", PublicKeyMaterial=line)
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert imp["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.md5(spki).digest())
    await ec2.fails("InvalidKeyPair.Duplicate", "CreateKeyPair", KeyName="k-rsa")
    await ec2.fails(
        "InvalidKey.Format", "ImportKeyPair", KeyName="bad", PublicKeyMaterial=b"not a key"
    )
    desc = await ec2.call("DescribeKeyPairs", KeyNames=["k-ed", "k-imp"])
    assert sorted(k["KeyName"] for k in desc["KeyPairs"]) == ["k-ed", "k-imp"]
    await ec2.fails("InvalidKeyPair.NotFound", "DescribeKeyPairs", KeyNames=["nope"])
    f = [{"Name": "key-type", "Values": ["ed25519"]}]
    assert [k["KeyName"] for k in (await ec2.call("DescribeKeyPairs", Filters=f))["KeyPairs"]] == [
        "k-ed"
    ]
    await ec2.call("CreateTags", Resources=[ed["KeyPairId"]], Tags=[{"Key": "a", "Value": "b"}])
    mine = [{"Name": "resource-id", "Values": [ed["KeyPairId"]]}]
    assert len((await ec2.call("DescribeTags", Filters=mine))["Tags"]) == 1
    await ec2.call("DeleteKeyPair", KeyName="k-ed")
    assert (await ec2.call("DescribeTags", Filters=mine))["Tags"] == []  # they went with it
    await ec2.call("DeleteKeyPair", KeyName="k-ed")  # missing names delete fine, as on AWS
    ed_pub = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    await ec2.call("ImportKeyPair", KeyName="k-ed2", PublicKeyMaterial=ed_pub)
    assert len((await ec2.call("DescribeKeyPairs"))["KeyPairs"]) == 3
    await ec2.fails("DryRunOperation", "CreateKeyPair", KeyName="k-dry", DryRun=True)
    await ec2.fails("InvalidKeyPair.NotFound", "DescribeKeyPairs", KeyNames=["k-dry"])


async def test_security_groups(world: World) -> None:
    ec2 = world.admin
    groups = (await ec2.call("DescribeSecurityGroups"))["SecurityGroups"]
    default = next(g for g in groups if g["GroupName"] == "default")
    assert default["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"] == default["GroupId"]
    sg = (await ec2.call("CreateSecurityGroup", GroupName="web", Description="web"))["GroupId"]
    await ec2.fails(
        "InvalidGroup.Duplicate", "CreateSecurityGroup", GroupName="web", Description="again"
    )
    await ec2.fails(
        "InvalidGroup.Reserved", "CreateSecurityGroup", GroupName="default", Description="x"
    )
    perms = [
        {
            "IpProtocol": "tcp",
            "FromPort": 80,
            "ToPort": 443,
            "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "world"}],
        },
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": default["GroupId"]}]},
    ]
    out = await ec2.call("AuthorizeSecurityGroupIngress", GroupId=sg, IpPermissions=perms)
    assert len(out["SecurityGroupRules"]) == 2
    await ec2.fails(
        "InvalidPermission.Duplicate",
        "AuthorizeSecurityGroupIngress",
        GroupId=sg,
        IpPermissions=perms[:1],
    )
    await ec2.fails(
        "InvalidParameterValue",
        "AuthorizeSecurityGroupIngress",
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 90,
                "ToPort": 80,
                "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
            }
        ],
    )
    await ec2.fails(
        "InvalidParameterValue",
        "AuthorizeSecurityGroupIngress",
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "10.0.0.300/8"}],  # (host bits are normalised away)
            }
        ],
    )
    # the legacy flat form works too
    await ec2.call(
        "AuthorizeSecurityGroupIngress",
        GroupName="web",
        IpProtocol="udp",
        FromPort=53,
        ToPort=53,
        CidrIp="10.0.0.0/8",
    )
    g = (await ec2.call("DescribeSecurityGroups", GroupIds=[sg]))["SecurityGroups"][0]
    tcp = next(p for p in g["IpPermissions"] if p["IpProtocol"] == "tcp")
    assert (tcp["FromPort"], tcp["ToPort"]) == (80, 443)
    assert tcp["IpRanges"] == [{"CidrIp": "0.0.0.0/0", "Description": "world"}]
    assert g["IpPermissionsEgress"][0]["IpRanges"][0]["CidrIp"] == "0.0.0.0/0"
    f = [{"Name": "ip-permission.from-port", "Values": ["53"]}]
    assert [
        x["GroupId"]
        for x in (await ec2.call("DescribeSecurityGroups", Filters=f))["SecurityGroups"]
    ] == [sg]
    await ec2.call("RevokeSecurityGroupIngress", GroupId=sg, IpPermissions=perms[:1])
    await ec2.fails(
        "InvalidPermission.NotFound",
        "RevokeSecurityGroupIngress",
        GroupId=sg,
        IpPermissions=perms[:1],
    )
    await ec2.call(
        "RevokeSecurityGroupEgress",
        GroupId=sg,
        IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    await ec2.call(
        "AuthorizeSecurityGroupEgress",
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 443,
                "ToPort": 443,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    iid = await _instance(world, SecurityGroupIds=[sg])
    await ec2.fails("DependencyViolation", "DeleteSecurityGroup", GroupId=sg)
    await ec2.fails("CannotDelete", "DeleteSecurityGroup", GroupName="default")
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    await ec2.call("DeleteSecurityGroup", GroupId=sg)
    await ec2.fails("InvalidGroup.NotFound", "DescribeSecurityGroups", GroupIds=[sg])
    await ec2.fails("InvalidGroupId.Malformed", "DeleteSecurityGroup", GroupId="sg-zz")


async def test_elastic_addresses(world: World) -> None:
    ec2 = world.admin
    iid = await _instance(world)
    a = await ec2.call("AllocateAddress", Domain="vpc")
    assert a["PublicIp"].startswith("198.51.100.") and a["AllocationId"].startswith("eipalloc-")
    assoc = await ec2.call("AssociateAddress", AllocationId=a["AllocationId"], InstanceId=iid)
    desc = (await ec2.call("DescribeAddresses"))["Addresses"][0]
    assert desc["InstanceId"] == iid and desc["AssociationId"] == assoc["AssociationId"]
    inst = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert inst["Instances"][0]["PublicIpAddress"] == a["PublicIp"]
    await ec2.fails("InvalidIPAddress.InUse", "ReleaseAddress", AllocationId=a["AllocationId"])
    other = await _instance(world)
    await ec2.fails(
        "Resource.AlreadyAssociated",
        "AssociateAddress",
        AllocationId=a["AllocationId"],
        InstanceId=other,
    )
    moved = await ec2.call(
        "AssociateAddress",
        AllocationId=a["AllocationId"],
        InstanceId=other,
        AllowReassociation=True,
    )
    assoc = await ec2.call(
        "AssociateAddress", AllocationId=a["AllocationId"], InstanceId=iid, AllowReassociation=True
    )
    assert moved["AssociationId"] != assoc["AssociationId"]  # a new association each time
    f = [{"Name": "instance-id", "Values": [iid]}]
    assert len((await ec2.call("DescribeAddresses", Filters=f))["Addresses"]) == 1
    await ec2.call("DisassociateAddress", AssociationId=assoc["AssociationId"])
    await ec2.fails(
        "InvalidAssociationID.NotFound", "DisassociateAddress", AssociationId=assoc["AssociationId"]
    )
    await ec2.call("ReleaseAddress", AllocationId=a["AllocationId"])
    await ec2.fails(
        "InvalidAllocationID.NotFound", "DescribeAddresses", AllocationIds=[a["AllocationId"]]
    )
    # terminating an instance frees its address for another association
    b = await ec2.call("AllocateAddress")
    await ec2.call("AssociateAddress", PublicIp=b["PublicIp"], InstanceId=iid)
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    assert "InstanceId" not in (await ec2.call("DescribeAddresses"))["Addresses"][0]


async def test_volumes_and_snapshots(world: World) -> None:
    ec2 = world.admin
    await ec2.fails("InvalidParameterValue", "CreateVolume", AvailabilityZone="us-east-1a", Size=1)
    v = await ec2.call(
        "CreateVolume",
        AvailabilityZone="corral-1a",
        Size=2,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "k", "Value": "v"}]}],
    )
    assert v["State"] == "creating"
    await world.settle()
    vid = v["VolumeId"]
    assert world.node.volumes[vid] == 2 << 30
    iid = await _instance(world)
    await ec2.call("StopInstances", InstanceIds=[iid])
    await world.settle()
    att = await ec2.call("AttachVolume", VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    assert att["State"] == "attaching"
    desc = (await ec2.call("DescribeVolumes", VolumeIds=[vid]))["Volumes"][0]
    assert desc["State"] == "in-use" and desc["Attachments"][0]["InstanceId"] == iid
    await ec2.fails("VolumeInUse", "DeleteVolume", VolumeId=vid)
    await ec2.call("StartInstances", InstanceIds=[iid])
    await world.settle()
    assert [a.id for a in world.node.specs[iid].volumes] == [vid]  # the disk at the next start
    inst = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert inst["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"] == vid
    snap = await ec2.call("CreateSnapshot", VolumeId=vid, Description="nightly")
    await world.settle()
    s = (await ec2.call("DescribeSnapshots", SnapshotIds=[snap["SnapshotId"]]))["Snapshots"][0]
    assert s["State"] == "completed" and s["Progress"] == "100%" and s["VolumeSize"] == 2
    v2 = await ec2.call("CreateVolume", AvailabilityZone="corral-1a", SnapshotId=snap["SnapshotId"])
    await world.settle()
    assert v2["Size"] == 2 and world.node.volumes[v2["VolumeId"]] == 2 << 30
    f = [{"Name": "attachment.instance-id", "Values": [iid]}]
    assert [x["VolumeId"] for x in (await ec2.call("DescribeVolumes", Filters=f))["Volumes"]] == [
        vid
    ]
    det = await ec2.call("DetachVolume", VolumeId=vid)
    assert det["State"] == "detaching"
    await ec2.fails("IncorrectState", "DetachVolume", VolumeId=vid)
    await world.settle()  # the instance runs: the disk is unplugged by an operation
    assert ("volume_detach", vid) in world.node.calls
    await ec2.call("DeleteVolume", VolumeId=vid)
    await world.settle()
    await ec2.fails("InvalidVolume.NotFound", "DescribeVolumes", VolumeIds=[vid])
    await ec2.call("DeleteSnapshot", SnapshotId=snap["SnapshotId"])
    await world.settle()
    assert snap["SnapshotId"] not in world.node.snapshots
    await ec2.fails("InvalidVolumeID.Malformed", "DescribeVolumes", VolumeIds=["vol-x"])


async def test_images_create_register_share_deregister(world: World) -> None:
    ec2 = world.admin
    other = await world.account("other")
    other_id = (await world.caller(other)).account_id
    iid = await _instance(world)
    pid = world.node.running[iid]
    ami = (await ec2.call("CreateImage", InstanceId=iid, Name="web image"))["ImageId"]
    await world.settle()
    # powered off for the copy and started again (NoReboot not given), still running
    assert world.node.calls[-3:] == [("stop", iid), ("image_capture", iid), ("start", iid)]
    assert world.node.running[iid] != pid
    state = (await ec2.call("DescribeInstances", InstanceIds=[iid]))["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == "running"
    await ec2.call("CreateImage", InstanceId=iid, Name="hot copy", NoReboot=True)
    await world.settle()
    assert world.node.calls[-1] == ("image_capture", iid)
    img = (await ec2.call("DescribeImages", ImageIds=[ami]))["Images"][0]
    assert img["State"] == "available" and img["RootDeviceType"] == "ebs"
    snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    mine = [i["ImageId"] for i in (await ec2.call("DescribeImages", Owners=["self"]))["Images"]]
    assert mine[:2] == [world.image_id, ami]  # the admin owns the built-in images too
    builtin = (await ec2.call("DescribeImages", Owners=["corral"]))["Images"]
    assert [i["ImageId"] for i in builtin] == [world.image_id]
    assert builtin[0]["ImageOwnerAlias"] == "corral" and builtin[0]["Public"] is True
    await ec2.fails("InvalidAMIName.Duplicate", "CreateImage", InstanceId=iid, Name="web image")
    await ec2.fails("InvalidSnapshot.InUse", "DeleteSnapshot", SnapshotId=snap)
    # the other account sees only public images until the image is shared with it
    assert [i["ImageId"] for i in (await other.call("DescribeImages"))["Images"]] == [
        world.image_id
    ]  # not the admin's private copies
    await other.fails("InvalidAMIID.NotFound", "RunInstances", ImageId=ami, MinCount=1, MaxCount=1)
    await ec2.call(
        "ModifyImageAttribute", ImageId=ami, LaunchPermission={"Add": [{"UserId": other_id}]}
    )
    perms = await ec2.call("DescribeImageAttribute", ImageId=ami, Attribute="launchPermission")
    assert perms["LaunchPermissions"] == [{"UserId": other_id}]
    shared = await other.call("DescribeImages", ExecutableUsers=["self"])
    assert ami in [i["ImageId"] for i in shared["Images"]]
    await other.call("RunInstances", ImageId=ami, MinCount=1, MaxCount=1)
    await world.settle()
    await other.fails(
        "AuthFailure",
        "ModifyImageAttribute",
        ImageId=ami,
        LaunchPermission={"Add": [{"Group": "all"}]},
    )
    await ec2.call(
        "ModifyImageAttribute", ImageId=ami, LaunchPermission={"Remove": [{"UserId": other_id}]}
    )
    # register a second image from the snapshot: the kernel comes from its lineage
    ami2 = (
        await ec2.call(
            "RegisterImage",
            Name="from-snap",
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap}}],
        )
    )["ImageId"]
    await world.settle()
    assert (await ec2.call("DescribeImages", ImageIds=[ami2]))["Images"][0]["State"] == "available"
    await ec2.call("DeregisterImage", ImageId=ami)
    await ec2.fails("InvalidAMIID.NotFound", "DescribeImages", ImageIds=[ami])
    await ec2.fails("InvalidAMIID.Malformed", "DescribeImages", ImageIds=["tiny"])


async def test_tags_on_every_kind(world: World) -> None:
    ec2 = world.admin
    iid = await _instance(world)
    sg = (await ec2.call("CreateSecurityGroup", GroupName="g", Description="g"))["GroupId"]
    vol = (await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1))["VolumeId"]
    eip = (await ec2.call("AllocateAddress"))["AllocationId"]
    key = (await ec2.call("CreateKeyPair", KeyName="k"))["KeyPairId"]
    await world.settle()
    snap = (await ec2.call("CreateSnapshot", VolumeId=vol))["SnapshotId"]
    await world.settle()
    rids = [iid, sg, vol, eip, key, snap]
    await ec2.call(
        "CreateTags",
        Resources=rids,
        Tags=[{"Key": "team", "Value": "a"}, {"Key": "env", "Value": ""}],
    )
    tags = await ec2.call("DescribeTags", Filters=[{"Name": "key", "Values": ["team"]}])
    assert {t["ResourceType"] for t in tags["Tags"]} == {
        "instance",
        "security-group",
        "volume",
        "elastic-ip",
        "key-pair",
        "snapshot",
    }
    await ec2.call("DeleteTags", Resources=[iid], Tags=[{"Key": "team", "Value": "b"}])
    f = [{"Name": "resource-id", "Values": [iid]}]
    assert len((await ec2.call("DescribeTags", Filters=f))["Tags"]) == 2  # value differed
    await ec2.call("DeleteTags", Resources=[iid], Tags=[{"Key": "team"}])
    assert len((await ec2.call("DescribeTags", Filters=f))["Tags"]) == 1
    await ec2.call("DeleteTags", Resources=[iid])
    assert (await ec2.call("DescribeTags", Filters=f))["Tags"] == []
    await ec2.fails(
        "InvalidInstanceID.NotFound",
        "CreateTags",
        Resources=["i-0000000000000000a"],
        Tags=[{"Key": "a", "Value": "b"}],
    )
    await ec2.fails(
        "InvalidParameterValue",
        "CreateTags",
        Resources=[iid],
        Tags=[{"Key": "aws:x", "Value": "b"}],
    )
    await ec2.fails(
        "InvalidID", "CreateTags", Resources=["web-1"], Tags=[{"Key": "a", "Value": "b"}]
    )
    assert base64  # keep the import for readers who decode outputs


async def test_a_nul_character_in_a_parameter_is_invalid_on_every_database(world: World) -> None:
    """PostgreSQL keeps no NUL in text: the endpoint refuses it for both databases alike."""
    await world.admin.fails(
        "InvalidParameterValue", "CreateSecurityGroup", GroupName="a\x00b", Description="d"
    )
    await world.admin.fails("InvalidParameterValue", "DeleteSecurityGroup", GroupName="\x00")
