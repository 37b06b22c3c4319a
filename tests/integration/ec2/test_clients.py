"""Client compatibility: real clients, unchanged, against the session's live Corral daemon.
boto3's STS client asks who it is; the AWS CLI, boto3's resource API and Apache Libcloud's EC2
driver each go through a realistic session (docs/ec2.md has the recipes)."""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.config import Config

from tests.harness import Daemon
from tests.integration.ec2.conftest import credentials


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
