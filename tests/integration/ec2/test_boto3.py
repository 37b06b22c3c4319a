"""boto3 and botocore's waiters drive real VMs through Corral's EC2 API: key pairs, groups,
run with a Name tag and user data, console output, stop, a volume attached while stopped and
seen by the guest at the next start, an image made from the instance that boots, terminate.
At most two VMs run at once."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from corral.node.driver import cgroups
from tests.harness import Daemon, wait_for

WAIT = {"Delay": 2, "MaxAttempts": 90}
USER_DATA = "#!/bin/sh\necho ec2-user-data-ran > /root/ec2.out\n"


def cli_key(d: Daemon) -> str:
    """The CLI's own SSH key (so `corral ssh` logs in), made here when missing."""
    key = d.home / "corral" / "id_ed25519"
    pub = key.with_suffix(".pub")
    if not pub.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        priv = ed25519.Ed25519PrivateKey.generate()
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                priv.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
        pub.write_text(
            priv.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
            + "\n"
        )
    return pub.read_text().strip()


def test_boto3_lifecycle_with_waiters_volume_and_image(corral: Daemon, ec2: Any, tiny: str) -> None:
    # the session's earlier EC2 tests may have imported the same key already
    if not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["cli"]}])["KeyPairs"]:
        ec2.import_key_pair(KeyName="cli", PublicKeyMaterial=cli_key(corral).encode())
    # as an EC2 client does (issue 12): find the default VPC, pick its subnet, launch there
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    subnet = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"][0]
    sg = ec2.create_security_group(GroupName="web", Description="web servers", VpcId=vpc["VpcId"])[
        "GroupId"
    ]
    ec2.authorize_security_group_ingress(
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    res = ec2.run_instances(
        ImageId=tiny,
        MinCount=1,
        MaxCount=1,
        InstanceType="cr1.micro",
        KeyName="cli",
        SecurityGroupIds=[sg],
        SubnetId=subnet["SubnetId"],
        UserData=USER_DATA,
        ClientToken="boto3-lifecycle-1",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web-1"}]}
        ],
    )
    inst = res["Instances"][0]
    iid = inst["InstanceId"]
    assert inst["State"]["Name"] == "pending" and inst["InstanceType"] == "cr1.micro"
    # the same client token gives the same instance, not a second one
    again = ec2.run_instances(ImageId=tiny, MinCount=1, MaxCount=1, ClientToken="boto3-lifecycle-1")
    assert again["Instances"][0]["InstanceId"] == iid

    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    desc = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert desc["PrivateIpAddress"] and desc["PrivateDnsName"].startswith("web-1.")
    assert ipaddress.ip_address(desc["PrivateIpAddress"]) in ipaddress.ip_network(
        subnet["CidrBlock"]
    )
    assert (desc["VpcId"], desc["SubnetId"]) == (vpc["VpcId"], subnet["SubnetId"])
    nic = desc["NetworkInterfaces"][0]
    assert nic["PrivateIpAddress"] == desc["PrivateIpAddress"]
    assert (
        ec2.describe_network_interfaces(NetworkInterfaceIds=[nic["NetworkInterfaceId"]])[
            "NetworkInterfaces"
        ][0]["Attachment"]["InstanceId"]
        == iid
    )
    assert desc["SecurityGroups"] == [{"GroupId": sg, "GroupName": "web"}]
    assert {"Key": "Name", "Value": "web-1"} in desc["Tags"]

    # a real guest: SSH with the imported key pair, user data ran, the CPU cap is the type's
    assert "ec2-user-data-ran" in corral.guest_file("web-1", "/root/ec2.out")
    assert corral.ssh("web-1", "nproc").ok().out.strip() == "1"
    group = f"corral/{corral.settings.namespace}/{iid}"
    if cgroups.is_v2():
        quota = (Path("/sys/fs/cgroup") / group / "cpu.max").read_text().split()[0]
    else:
        quota = (Path("/sys/fs/cgroup/cpu") / group / "cpu.cfs_quota_us").read_text().strip()
    assert quota == "50000"  # cr1.micro: half a core
    # botocore decodes the base64 Output itself
    console = wait_for(
        lambda: ec2.get_console_output(InstanceId=iid).get("Output", ""), 60, what="console output"
    )
    assert "Linux version" in console

    ec2.stop_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig=WAIT)

    vol = ec2.create_volume(
        AvailabilityZone="corral-1a",
        Size=1,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "data"}]}],
    )
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol["VolumeId"]], WaiterConfig=WAIT)
    assert (corral.state_dir / "volumes" / f"{vol['VolumeId']}.qcow2").exists()
    ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=iid, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol["VolumeId"]], WaiterConfig=WAIT)

    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "cr1.small"})
    ec2.start_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceType")
    assert attr["InstanceType"]["Value"] == "cr1.small"
    # the volume is the guest's second virtio disk, with the volume id as its serial
    out = wait_for(
        lambda: corral.ssh("web-1", "cat /sys/block/vdb/serial").out,
        90,
        what="the attached volume in the guest",
    )
    assert vol["VolumeId"].replace("-", "") in out

    # an image made from the running instance (powered off for the copy, as on AWS) boots
    boot_id = corral.ssh("web-1", "cat /proc/sys/kernel/random/boot_id").ok().out
    ami = ec2.create_image(InstanceId=iid, Name="web-image", Description="from web-1")["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[ami], WaiterConfig=WAIT)
    again = wait_for(
        lambda: corral.ssh("web-1", "cat /proc/sys/kernel/random/boot_id").out,
        90,
        what="web-1 back after CreateImage",
    )
    assert again != boot_id  # it was powered off and started again
    assert (
        ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"][
            "Name"
        ]
        == "running"
    )
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert img["RootDeviceType"] == "ebs" and img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    clone = ec2.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        KeyName="cli",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web-2"}]}
        ],
    )["Instances"][0]
    ec2.get_waiter("instance_running").wait(InstanceIds=[clone["InstanceId"]], WaiterConfig=WAIT)
    # the clone carries web-1's disk: the user-data output is there
    assert "ec2-user-data-ran" in corral.ssh("web-2", "cat /root/ec2.out").ok().out

    ec2.terminate_instances(InstanceIds=[iid, clone["InstanceId"]])
    ec2.get_waiter("instance_terminated").wait(
        InstanceIds=[iid, clone["InstanceId"]], WaiterConfig=WAIT
    )
    vols = ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"]
    assert vols[0]["State"] == "available"  # detached by the termination, kept
    ec2.delete_volume(VolumeId=vol["VolumeId"])
    ec2.deregister_image(ImageId=ami)
    ec2.delete_security_group(GroupId=sg)
    ec2.delete_key_pair(KeyName="cli")
