"""boto3 and the AWS CLI pointed at the session's real Corral daemon."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.harness import Daemon


def credentials(d: Daemon) -> dict[str, str]:
    data = json.loads((d.state_dir / "admin.credentials").read_text())
    return {
        "aws_access_key_id": data["access_key_id"],
        "aws_secret_access_key": data["secret_access_key"],
    }


@pytest.fixture(scope="session")
def ec2(corral: Daemon) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=corral.url,
        region_name="corral-1",
        config=Config(retries={"max_attempts": 2}),
        **credentials(corral),
    )


@pytest.fixture(scope="session")
def tiny(corral: Daemon, ec2: Any) -> str:
    images = ec2.describe_images(
        Owners=["corral"], Filters=[{"Name": "name", "Values": ["tiny-*"]}]
    )["Images"]
    assert images, "the tiny image should be built by the session fixture"
    return str(images[0]["ImageId"])


@pytest.fixture(scope="session")
def aws_env(corral: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("awshome")
    creds = credentials(corral)
    env = dict(os.environ)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "corral-1",
            "HOME": str(home),
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
        }
    )
    yield env


def wait_running(corral: Daemon, ec2: Any, ids: list[str], config: dict[str, int]) -> None:
    """boto3's instance_running waiter; when it gives up, the failure names each instance's
    state and reason and the daemon's last log lines about it (a waiter says only which
    state it matched)."""
    from botocore.exceptions import WaiterError

    try:
        ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=config)
    except WaiterError as err:
        found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        states = {
            i["InstanceId"]: (i["State"]["Name"], i.get("StateReason", {}).get("Message", ""))
            for r in found
            for i in r["Instances"]
        }
        log = "\n".join(
            line for line in corral.log_tail(4000).splitlines() if any(i in line for i in ids)
        )
        raise AssertionError(f"{err}\nstates: {states}\ndaemon log:\n{log[-4000:]}") from err
