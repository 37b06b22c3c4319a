"""The AWS CLI (from PyPI), unchanged, against Corral: run, wait, describe with filters,
terminate, wait."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness import Daemon

AWS = str(Path(sys.executable).with_name("aws"))


def aws(d: Daemon, env: dict[str, str], *args: str, timeout: float = 300) -> Any:
    p = subprocess.run(
        [AWS, "--endpoint-url", d.url, "--output", "json", "ec2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert p.returncode == 0, f"aws ec2 {' '.join(args)} failed:\n{p.stderr}"
    return json.loads(p.stdout) if p.stdout.strip() else None


def test_aws_cli_run_wait_describe_terminate(
    corral: Daemon, aws_env: dict[str, str], tiny: str
) -> None:
    out = aws(
        corral,
        aws_env,
        "run-instances",
        "--image-id",
        tiny,
        "--count",
        "1",
        "--instance-type",
        "cr1.small",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=team,Value=cli}]",
    )
    iid = out["Instances"][0]["InstanceId"]
    aws(corral, aws_env, "wait", "instance-running", "--instance-ids", iid)
    desc = aws(
        corral,
        aws_env,
        "describe-instances",
        "--filters",
        "Name=tag:team,Values=cli",
        "Name=instance-state-name,Values=running",
    )
    found = [i for r in desc["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in found] == [iid]
    assert found[0]["InstanceType"] == "cr1.small"
    types = aws(corral, aws_env, "describe-instance-types", "--instance-types", "cr1.small")
    assert types["InstanceTypes"][0]["VCpuInfo"]["DefaultVCpus"] == 1
    aws(corral, aws_env, "terminate-instances", "--instance-ids", iid)
    aws(corral, aws_env, "wait", "instance-terminated", "--instance-ids", iid)
    bad = subprocess.run(
        [
            AWS,
            "--endpoint-url",
            corral.url,
            "ec2",
            "describe-instances",
            "--instance-ids",
            "i-00000000000000000",
        ],
        capture_output=True,
        text=True,
        env=aws_env,
        timeout=60,
    )
    assert bad.returncode != 0 and "InvalidInstanceID.NotFound" in bad.stderr


def test_printed_profile_works_as_printed(
    corral: Daemon, aws_env: dict[str, str], tmp_path: Path
) -> None:
    out = corral.cli("account", "create", "dev").ok().out
    creds = out.split("# ~/.aws/credentials\n")[1].split("\n\n")[0]
    conf = out.split("# ~/.aws/config\n")[1].split("\n\n")[0]
    (tmp_path / "credentials").write_text(creds + "\n")
    (tmp_path / "config").write_text(conf + "\n")
    env = {k: v for k, v in aws_env.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_CONFIG_FILE": str(tmp_path / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    p = subprocess.run(
        [AWS, "--profile", "corral-dev", "--output", "json", "ec2", "describe-instances"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["Reservations"] == []  # dev sees none of admin's instances
    key = corral.cli("credentials", "create", "--account", "dev").ok().out
    assert "aws_access_key_id" in key and "region = corral-1" in key
