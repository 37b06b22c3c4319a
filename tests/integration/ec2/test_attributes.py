"""Instance attributes on real VMs, through boto3: a group change reaches the kernel's packet
filter at once (real packets between two guests), termination protection refuses
TerminateInstances, and a power-off from inside the guest terminates an instance whose
shutdown behaviour says so. Two VMs at once."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.harness import Daemon, wait_for
from tests.integration.ec2.conftest import wait_running
from tests.integration.ec2.test_boto3 import WAIT, cli_key


def _get(d: Daemon, frm: str, url: str) -> bool:
    """Whether ``frm`` gets ``url``; an SSH hiccup on a loaded machine is asked again, never
    taken for an answer."""
    for _ in range(3):
        res = d.ssh(frm, f"timeout 5 wget -q -O - {url} && echo GOT || echo NOPE")
        if "GOT" in res.out or "NOPE" in res.out:
            return "GOT" in res.out
    raise AssertionError(f"could not ask {frm} to fetch {url}: {res.out} {res.err}")


def _state(ec2: Any, iid: str) -> dict[str, Any]:
    return dict(ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])


def test_groups_protection_and_shutdown_behaviour_on_real_guests(
    corral: Daemon, ec2: Any, tiny: str
) -> None:
    if not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["cli"]}])["KeyPairs"]:
        ec2.import_key_pair(KeyName="cli", PublicKeyMaterial=cli_key(corral).encode())
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    closed = ec2.create_security_group(GroupName="attr-closed", Description="no ingress")["GroupId"]
    open_ = ec2.create_security_group(GroupName="attr-open", Description="8080 from default")[
        "GroupId"
    ]
    ec2.authorize_security_group_ingress(
        GroupId=open_,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8080,
                "ToPort": 8080,
                "UserIdGroupPairs": [{"GroupId": default}],
            }
        ],
    )

    def run(name: str, **kw: Any) -> str:
        out = ec2.run_instances(
            ImageId=tiny,
            MinCount=1,
            MaxCount=1,
            InstanceType="cr1.small",  # a whole core: boots in half the time of the default
            KeyName="cli",
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}
            ],
            **kw,
        )
        return str(out["Instances"][0]["InstanceId"])

    srv = run(
        "attr-srv",
        SecurityGroupIds=[closed],
        DisableApiTermination=True,
        InstanceInitiatedShutdownBehavior="terminate",
    )
    cli = run("attr-cli")
    try:
        wait_running(corral, ec2, [srv, cli], WAIT)
        ip = _state(ec2, srv)["PrivateIpAddress"]
        corral.ssh(
            "attr-srv", "mkdir -p /www && echo hi > /www/index.html && httpd -p 8080 -h /www"
        ).ok()
        url = f"http://{ip}:8080/"
        assert not _get(corral, "attr-cli", url)

        # groupSet: in force when the API answers, both ways
        ec2.modify_instance_attribute(InstanceId=srv, Groups=[open_])
        assert _get(corral, "attr-cli", url)
        ec2.modify_instance_attribute(InstanceId=srv, Groups=[closed])
        assert not _get(corral, "attr-cli", url)

        # termination protection
        with pytest.raises(ClientError) as err:
            ec2.terminate_instances(InstanceIds=[srv])
        assert err.value.response["Error"]["Code"] == "OperationNotPermitted"
        assert _state(ec2, srv)["State"]["Name"] == "running"
        ec2.modify_instance_attribute(InstanceId=srv, DisableApiTermination={"Value": False})

        # the guest powers itself off: shutdown behaviour terminate
        attr = ec2.describe_instance_attribute(
            InstanceId=srv, Attribute="instanceInitiatedShutdownBehavior"
        )
        assert attr["InstanceInitiatedShutdownBehavior"] == {"Value": "terminate"}
        corral.ssh("attr-srv", "poweroff")  # the connection may drop before ssh reports
        ec2.get_waiter("instance_terminated").wait(InstanceIds=[srv], WaiterConfig=WAIT)
        gone = _state(ec2, srv)
        assert gone["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
        # the default (stop): a guest power-off stops the other one
        corral.ssh("attr-cli", "poweroff")
        wait_for(
            lambda: _state(ec2, cli)["State"]["Name"] == "stopped", 120, what="attr-cli stopped"
        )
    finally:
        with contextlib.suppress(ClientError):  # already off when the test got that far
            ec2.modify_instance_attribute(InstanceId=srv, DisableApiTermination={"Value": False})
        ec2.terminate_instances(InstanceIds=[srv, cli])


def test_block_device_mappings_at_launch_on_a_real_guest(
    corral: Daemon, ec2: Any, tiny: str
) -> None:
    """A blank volume and one from a snapshot, made before the first boot: the guest sees both
    disks (serial = the volume id without its dash); DeleteOnTermination decides what stays."""
    if not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["cli"]}])["KeyPairs"]:
        ec2.import_key_pair(KeyName="cli", PublicKeyMaterial=cli_key(corral).encode())
    src = ec2.create_volume(AvailabilityZone="corral-1a", Size=2)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[src], WaiterConfig=WAIT)
    snap = ec2.create_snapshot(VolumeId=src)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig=WAIT)
    iid = ec2.run_instances(
        ImageId=tiny,
        MinCount=1,
        MaxCount=1,
        InstanceType="cr1.small",
        KeyName="cli",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/sdb", "Ebs": {"VolumeSize": 1, "DeleteOnTermination": False}},
            {"DeviceName": "/dev/sdc", "Ebs": {"SnapshotId": snap}},
        ],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "bdm-1"}]}
        ],
    )["Instances"][0]["InstanceId"]
    try:
        wait_running(corral, ec2, [iid], WAIT)
        mapped = {
            m["DeviceName"]: m["Ebs"]["VolumeId"] for m in _state(ec2, iid)["BlockDeviceMappings"]
        }
        assert sorted(mapped) == ["/dev/sdb", "/dev/sdc"]
        cmd = "for d in /sys/block/vd*; do echo $(cat $d/serial 2>/dev/null) $(cat $d/size); done"
        res = corral.ssh("bdm-1", cmd)
        if res.rc != 0:  # a loaded machine: SSH may need longer than the CLI waits
            res = corral.ssh("bdm-1", cmd)
        console = ec2.get_console_output(InstanceId=iid).get("Output", "")
        assert res.rc == 0, f"{res.err}\nconsole:\n{console[-3000:]}"
        listing = res.out
        seen = dict(line.split() for line in listing.splitlines() if len(line.split()) == 2)
        assert seen[mapped["/dev/sdb"].replace("-", "")] == str(1 << 21)  # 1 GiB in sectors
        assert seen[mapped["/dev/sdc"].replace("-", "")] == str(2 << 21)
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    kept = wait_for(
        lambda: (
            ec2.describe_volumes(VolumeIds=[mapped["/dev/sdb"]])["Volumes"][0]["State"]
            == "available"
        ),
        120,
        what="/dev/sdb kept",
    )
    assert kept
    wait_for(
        lambda: (
            not ec2.describe_volumes(
                Filters=[{"Name": "volume-id", "Values": [mapped["/dev/sdc"]]}]
            )["Volumes"]
        ),
        120,
        what="/dev/sdc deleted with the instance",
    )
