"""The story the issue ends on, with Debian: a Debian appliance with a data volume (cloud-init
runs its config, udev and systemd mount the volume), upgraded with `replace` without losing its
data, address or name (systemd-networkd takes the moved address when the link comes back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, wait_for
from tests.integration.volumes.conftest import gone, instances, resolve, ssh, volume

# five minutes of two Debian boots: run by bench/long, not by scripts/test (the tiny appliance
# tests in test_appliances.py cover replace, data, address and name in the suite)
pytestmark = [pytest.mark.slow, pytest.mark.long]

API = """\
name = "deb"

[services.api]
image = "{image}"
memory = "512M"
run = '''mkdir -p /srv/www && ln -sfn /srv/data /srv/www/data &&
(setsid python3 -m http.server 80 -d /srv/www > /var/log/http.log 2>&1 < /dev/null &)'''
health = {{ port = 80, path = "/health", timeout = 600 }}

[services.api.files]
"/srv/www/health" = {{ content = "ok\\n" }}

[[services.api.volumes]]
name = "data"
size = "1G"
mount = "/srv/data"
"""


def test_a_debian_appliance_is_upgraded_by_replace_keeping_its_data(
    corral: Daemon, debian: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "deb.toml"
    path.write_text(API.format(image="debian:12"))
    try:
        out = corral.cli("apply", str(path), timeout=900).ok().out
        assert "+ create api" in out
        ssh(corral, "api", "echo debian-data | sudo tee /srv/data/file && sync", wait=300)
        assert "no changes" in corral.cli("apply", str(path)).ok().out
        before = instances(corral)["api"]
        corral.cli("replace", "api", "--image", "debian:12", "--timeout", "600", timeout=1500).ok()
        after = instances(corral)["api"]
        assert after["id"] != before["id"]
        assert after["private_ip"] == before["private_ip"] == resolve(corral, "api")
        got = ssh(
            corral,
            "api",
            "cat /srv/data/file; curl -s http://127.0.0.1/data/file "
            "|| python3 -c 'import urllib.request as u; print(u.urlopen("
            '"http://127.0.0.1/data/file").read().decode())\'; '
            "ls /dev/disk/by-id/",
            wait=300,
        )
        vid = volume(corral, "api-data")["id"]
        assert got.split()[:2] == ["debian-data", "debian-data"]
        assert f"virtio-{vid.replace('-', '')}" in got
        log = wait_for(
            lambda: (
                "host name api"
                in (o := ssh(corral, "api", "sudo cat /var/log/corral-appliance.log"))
                and o
            ),
            60,
            what="the helper saw the address move",
        )
        assert "mounted data" in log
    finally:
        corral.cli("rm", "api", "--force", timeout=300)
        for name, inst in instances(corral).items():
            if name.startswith("api-next-"):
                corral.cli("rm", inst["id"], "--force", timeout=300)
        gone(corral, "api-data")
