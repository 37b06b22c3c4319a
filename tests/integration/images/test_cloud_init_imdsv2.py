"""Real cloud-init against Corral's metadata service with IMDSv2 tokens required: it gets a
token, sets the host name, installs the key and runs user-data; a request without a token is
refused inside the guest."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Daemon

pytestmark = pytest.mark.slow

PROBE = r"""
import urllib.request, urllib.error
md = "http://169.254.169.254/latest/"
try:
    urllib.request.urlopen(md + "meta-data/instance-id", timeout=3)
    print("V1-ANSWERED")
except urllib.error.HTTPError as e:
    print("V1", e.code)
req = urllib.request.Request(md + "api/token", method="PUT",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
token = urllib.request.urlopen(req, timeout=3).read().decode()
req = urllib.request.Request(md + "meta-data/instance-id",
                             headers={"X-aws-ec2-metadata-token": token})
print("V2", urllib.request.urlopen(req, timeout=3).read().decode())
"""


def test_cloud_init_works_with_imdsv2_required(
    corral: Daemon, debian: dict[str, Any], tmp_path: Any
) -> None:
    ud = tmp_path / "ud.sh"
    ud.write_text("#!/bin/sh\necho v2-user-data > /root/v2.out\n")
    corral.cli(
        "run",
        "debian:12",
        "--name",
        "deb-v2",
        "--memory",
        "512M",
        "--imds-tokens",
        "required",
        "--user-data",
        str(ud),
        timeout=300,
    ).ok()
    try:

        def ssh(cmd: str) -> str:
            return corral.cli("ssh", "deb-v2", "--wait", "300", "--", cmd, timeout=420).ok().out

        assert ssh("hostname").strip() == "deb-v2"
        assert "status: done" in ssh("sudo cloud-init status --wait")
        assert "v2-user-data" in ssh("sudo cat /root/v2.out")
        iid = corral.client().instance_show("deb-v2").id
        out = ssh(f"python3 -c '{PROBE}'")
        assert "V1 401" in out and f"V2 {iid}" in out
    finally:
        corral.cli("rm", "--force", "deb-v2", timeout=300)
