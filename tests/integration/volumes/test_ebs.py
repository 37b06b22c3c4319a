"""EBS-style images on real VMs: an image made from an instance (CreateImage) boots from a root
*volume* made from the image's root snapshot (it shows in DescribeVolumes, goes with the
instance); a snapshot of that root volume taken while it runs registers as a new image
(RegisterImage) that boots with the same data."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.harness import WHOLE_CORE, Daemon, wait_for
from tests.integration.volumes.conftest import ssh

WAIT = {"Delay": 2, "MaxAttempts": 90}


@pytest.fixture(scope="module")
def ec2(corral: Daemon) -> Any:
    data = json.loads((corral.state_dir / "admin.credentials").read_text())
    return boto3.client(
        "ec2",
        endpoint_url=corral.url,
        region_name="corral-1",
        aws_access_key_id=data["access_key_id"],
        aws_secret_access_key=data["secret_access_key"],
        config=Config(retries={"max_attempts": 2}),
    )


def _run(ec2: Any, image: str, name: str) -> str:
    iid: str = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        KeyName="ebs-cli",
        InstanceType=WHOLE_CORE[1],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
    )["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    return iid


def _root(ec2: Any, iid: str) -> dict[str, Any]:
    vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])
    roots = [v for v in vols["Volumes"] if v["Attachments"][0]["Device"] == "/dev/sda1"]
    assert len(roots) == 1, vols
    return dict(roots[0])


def test_an_ebs_style_image_boots_from_a_volume_made_from_its_snapshot(
    corral: Daemon, ec2: Any
) -> None:
    corral.cli("run", "tiny", *WHOLE_CORE, "--name", "ebs-src").ok()  # makes the CLI's key, too
    pub = (corral.home / "corral" / "id_ed25519.pub").read_text()
    ec2.import_key_pair(KeyName="ebs-cli", PublicKeyMaterial=pub.encode())
    made: list[str] = []
    try:
        ssh(corral, "ebs-src", "echo from-the-source > /root/ebs-proof; sync")
        src = corral.client().instance_show("ebs-src").id
        ami = ec2.create_image(InstanceId=src, Name="ebs-test")["ImageId"]
        ec2.get_waiter("image_available").wait(ImageIds=[ami], WaiterConfig=WAIT)
        img = ec2.describe_images(ImageIds=[ami])["Images"][0]
        assert img["RootDeviceType"] == "ebs"
        snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        corral.cli("rm", "ebs-src").ok()

        iid = _run(ec2, ami, "ebs-1")
        made.append(iid)
        root = _root(ec2, iid)
        assert root["SnapshotId"] == snap and root["State"] == "in-use"
        assert root["Attachments"][0]["DeleteOnTermination"] is True
        assert (corral.state_dir / "volumes" / f"{root['VolumeId']}.qcow2").exists()
        desc = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert desc["RootDeviceType"] == "ebs"
        assert desc["BlockDeviceMappings"][0]["Ebs"]["VolumeId"] == root["VolumeId"]
        out = ssh(corral, "ebs-1", "cat /root/ebs-proof; echo written-on-ebs-1 > /root/ebs-1; sync")
        assert "from-the-source" in out
        # the root volume cannot be pulled out from under the instance
        res = corral.cli("volume", "detach", root["VolumeId"])
        assert res.rc != 0 and "root disk" in res.err

        # a snapshot of the running root volume (a QEMU backup job) registers as an image
        snap2 = ec2.create_snapshot(VolumeId=root["VolumeId"])["SnapshotId"]
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap2], WaiterConfig=WAIT)
        ami2 = ec2.register_image(
            Name="ebs-test-2",
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap2}}],
        )["ImageId"]
        ec2.get_waiter("image_available").wait(ImageIds=[ami2], WaiterConfig=WAIT)
        iid2 = _run(ec2, ami2, "ebs-2")
        made.append(iid2)
        assert _root(ec2, iid2)["VolumeId"] != root["VolumeId"]
        assert ssh(corral, "ebs-2", "cat /root/ebs-proof /root/ebs-1").split() == [
            "from-the-source",
            "written-on-ebs-1",
        ]

        ec2.terminate_instances(InstanceIds=made)
        ec2.get_waiter("instance_terminated").wait(InstanceIds=made, WaiterConfig=WAIT)
        gone = root["VolumeId"]
        wait_for(
            lambda: gone not in [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]],
            60,
            what="the root volume deleted with its instance",
        )
        made.clear()
        ec2.deregister_image(ImageId=ami2)
        ec2.deregister_image(ImageId=ami)
        ec2.delete_snapshot(SnapshotId=snap2)
    finally:
        if made:
            ec2.terminate_instances(InstanceIds=made)
        corral.cli("rm", "ebs-src", "--force")
        ec2.delete_key_pair(KeyName="ebs-cli")
