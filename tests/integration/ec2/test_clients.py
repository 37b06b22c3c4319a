"""Client compatibility: real clients, unchanged, against the session's live Corral daemon.
boto3's STS client asks who it is; the AWS CLI, boto3's resource API and Apache Libcloud's EC2
driver each go through a realistic session (docs/ec2.md has the recipes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from libcloud.compute.base import NodeSize
from libcloud.compute.drivers.ec2 import EC2NodeDriver

from tests.harness import Daemon, wait_for
from tests.integration.ec2.conftest import credentials
from tests.integration.ec2.test_boto3 import WAIT, cli_key

AWS = str(Path(sys.executable).with_name("aws"))


def test_boto3_sts_get_caller_identity(corral: Daemon) -> None:
    sts = boto3.client(
        "sts",
        endpoint_url=corral.url,
        region_name="corral-1",
        config=Config(retries={"max_attempts": 1}),
        **credentials(corral),
    )
    me = sts.get_caller_identity()
    data = json.loads((corral.state_dir / "admin.credentials").read_text())
    account = me["Account"]
    assert len(account) == 12 and account.isdigit()
    assert me["Arn"] == f"arn:aws:iam::{account}:user/admin"
    assert me["UserId"].startswith("AIDA")
    ec2: Any = boto3.client(
        "ec2", endpoint_url=corral.url, region_name="corral-1", **credentials(corral)
    )
    groups = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"]
    assert groups[0]["OwnerId"] == account
    assert data["access_key_id"]


# -- the AWS CLI, with no flags but the endpoint ------------------------------------------------


def _aws(corral: Daemon, env: dict[str, str], *args: str) -> Any:
    p = subprocess.run(
        [AWS, "--endpoint-url", corral.url, "--output", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, f"aws {' '.join(args)} failed:\n{p.stderr}"
    return json.loads(p.stdout) if p.stdout.strip() else None


def test_aws_cli_everyday_commands_need_no_flags(corral: Daemon, aws_env: dict[str, str]) -> None:
    me = _aws(corral, aws_env, "sts", "get-caller-identity")
    assert len(me["Account"]) == 12
    assert (
        _aws(corral, aws_env, "ec2", "describe-regions")["Regions"][0]["RegionName"] == "corral-1"
    )
    assert _aws(corral, aws_env, "ec2", "describe-availability-zones")["AvailabilityZones"]
    assert _aws(corral, aws_env, "ec2", "describe-instance-types")["InstanceTypes"]
    assert _aws(corral, aws_env, "ec2", "describe-images", "--owners", "corral")["Images"]
    _aws(corral, aws_env, "ec2", "create-key-pair", "--key-name", "cli-a")
    _aws(corral, aws_env, "ec2", "create-key-pair", "--key-name", "cli-b")
    one = _aws(corral, aws_env, "ec2", "describe-key-pairs", "--key-names", "cli-b")
    assert [k["KeyName"] for k in one["KeyPairs"]] == ["cli-b"]
    sg = _aws(
        corral,
        aws_env,
        "ec2",
        "create-security-group",
        "--group-name",
        "cli-web",
        "--description",
        "web",
    )["GroupId"]
    _aws(
        corral,
        aws_env,
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        sg,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "0.0.0.0/0",
    )
    groups = _aws(corral, aws_env, "ec2", "describe-security-groups", "--group-ids", sg)
    assert groups["SecurityGroups"][0]["IpPermissions"][0]["FromPort"] == 22
    vol = _aws(
        corral,
        aws_env,
        "ec2",
        "create-volume",
        "--size",
        "1",
        "--availability-zone",
        "corral-1a",
    )["VolumeId"]
    _aws(corral, aws_env, "ec2", "create-tags", "--resources", vol, "--tags", "Key=app,Value=db")
    # the CLI sends MaxResults=1000 to these two: AWS serves 500 / 1000, so does Corral
    vols = _aws(corral, aws_env, "ec2", "describe-volumes")["Volumes"]
    assert vol in [v["VolumeId"] for v in vols]
    _aws(corral, aws_env, "ec2", "describe-snapshots", "--owner-ids", "self")
    tags = _aws(
        corral, aws_env, "ec2", "describe-tags", "--filters", f"Name=resource-id,Values={vol}"
    )
    assert tags["Tags"] == [
        {"Key": "app", "ResourceId": vol, "ResourceType": "volume", "Value": "db"}
    ]
    wait_for(
        lambda: (
            _aws(corral, aws_env, "ec2", "describe-volumes", "--volume-ids", vol)["Volumes"][0][
                "State"
            ]
            == "available"
        ),
        120,
        what="volume available",
    )
    _aws(corral, aws_env, "ec2", "delete-volume", "--volume-id", vol)
    _aws(corral, aws_env, "ec2", "delete-security-group", "--group-id", sg)
    _aws(corral, aws_env, "ec2", "delete-key-pair", "--key-name", "cli-a")
    left = _aws(corral, aws_env, "ec2", "describe-key-pairs")["KeyPairs"]
    assert "cli-b" in [k["KeyName"] for k in left] and "cli-a" not in [k["KeyName"] for k in left]


# -- boto3's resource API ----------------------------------------------------------------------


def test_boto3_resource_api_session(corral: Daemon, tiny: str) -> None:
    ec2: Any = boto3.resource(
        "ec2",
        endpoint_url=corral.url,
        region_name="corral-1",
        config=Config(retries={"max_attempts": 2}),
        **credentials(corral),
    )
    key = ec2.create_key_pair(KeyName="res-key")
    assert key.key_material.startswith("-----BEGIN RSA PRIVATE KEY-----")
    sg = ec2.create_security_group(GroupName="res-web", Description="resource api")
    sg.authorize_ingress(IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="10.0.0.0/8")
    sg.reload()
    assert sg.ip_permissions[0]["IpRanges"] == [{"CidrIp": "10.0.0.0/8"}]
    (inst,) = ec2.create_instances(
        ImageId=tiny,
        MinCount=1,
        MaxCount=1,
        InstanceType="cr1.small",
        KeyName="res-key",
        SecurityGroupIds=[sg.id],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "res-1"}]}
        ],
    )
    try:
        inst.wait_until_running(WaiterConfig=WAIT)
        inst.reload()
        assert inst.state["Name"] == "running" and inst.private_ip_address
        assert inst.key_name == "res-key" and inst.security_groups[0]["GroupId"] == sg.id
        inst.create_tags(Tags=[{"Key": "env", "Value": "test"}])
        found = list(ec2.instances.filter(Filters=[{"Name": "tag:env", "Values": ["test"]}]))
        assert [i.id for i in found] == [inst.id]
        inst.modify_attribute(DisableApiTermination={"Value": True})
        assert inst.describe_attribute(Attribute="disableApiTermination")[
            "DisableApiTermination"
        ] == {"Value": True}
        inst.modify_attribute(DisableApiTermination={"Value": False})
        inst.stop()
        inst.wait_until_stopped(WaiterConfig=WAIT)
    finally:
        inst.terminate()
    inst.wait_until_terminated(WaiterConfig=WAIT)
    sg.delete()
    key.delete()
    assert [k.name for k in ec2.key_pairs.all()].count("res-key") == 0


# -- Apache Libcloud's EC2 driver ------------------------------------------------------------


class CorralEC2Driver(EC2NodeDriver):  # type: ignore[misc]
    """Libcloud's EC2 driver pointed at Corral: its region table does not know ``corral-1``,
    so it starts as us-east-1 (any known region) and signs (SigV4) for Corral's region."""

    def __init__(self, key: str, secret: str, host: str, port: int) -> None:
        super().__init__(key, secret, secure=False, host=host, port=port, signature_version="4")
        self.region_name = "corral-1"


def _nodes(driver: EC2NodeDriver, node_id: str) -> list[Any]:
    return list(driver.list_nodes(ex_node_ids=[node_id]))  # type: ignore[arg-type]


def test_libcloud_session(corral: Daemon, tiny: str) -> None:
    creds = credentials(corral)
    host, port = corral.url.split("://", 1)[1].rstrip("/").split(":")
    driver = CorralEC2Driver(
        creds["aws_access_key_id"], creds["aws_secret_access_key"], host, int(port)
    )
    pub = cli_key(corral)
    for name in ("lc-a", "lc-b", "lc-c"):
        driver.import_key_pair_from_string(name, pub)
    # get_key_pair sends KeyName=x without an index: only that key comes back
    assert driver.get_key_pair("lc-b").name == "lc-b"
    driver.delete_key_pair(driver.get_key_pair("lc-b"))
    names = sorted(k.name for k in driver.list_key_pairs())
    assert "lc-a" in names and "lc-c" in names and "lc-b" not in names
    group = driver.ex_create_security_group("lc-web", "libcloud")
    driver.ex_authorize_security_group_ingress(group["group_id"], 22, 22, ["0.0.0.0/0"])
    images = driver.list_images(ex_owner="corral")
    image = next(i for i in images if i.id == tiny)
    size = NodeSize("cr1.small", "cr1.small", 512, 1, 0, 0, driver)
    node = driver.create_node("lc-1", size, image, ex_keyname="lc-a", ex_security_groups=["lc-web"])
    try:
        wait_for(
            lambda: [n for n in _nodes(driver, node.id) if n.state == "running"],
            600,
            what="libcloud node running",
        )
        (seen,) = _nodes(driver, node.id)
        assert seen.extra["groups"][0]["group_name"] == "lc-web"
        assert seen.extra["key_name"] == "lc-a"
    finally:
        assert driver.destroy_node(node)
    wait_for(
        lambda: _nodes(driver, node.id)[0].state == "terminated",
        300,
        what="libcloud node terminated",
    )
