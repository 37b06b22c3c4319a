"""Volumes, snapshots and appliances on the session's real daemon (tiny built). Test images are
variants of the tiny recipe built here in seconds: a newer release, one that never serves, one
that fails once it sees its data. At most two or three VMs run at once; each test removes what
it made."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.images.recipe import BUILTIN
from tests.harness import Daemon, dns_addresses, dns_query, wait_for
from tests.integration.images.conftest import debian  # noqa: F401 (the Debian image, built once)

BOOM = {
    # something else holds the web port and answers nothing: the service never comes up. The
    # loop also ends an httpd that bound the port first (this background loop may start after
    # the service does: once it did, and the check passed), then takes the port itself
    "broken": "(while :; do killall httpd 2>/dev/null; nc -l -p 80 < /dev/null > /dev/null 2>&1; "
    "done) < /dev/null > /dev/null 2>&1 &\n",
    # the release dies once its data volume is there (a failed data migration)
    "lateboom": "(while :; do grep -q ' /srv/data ' /proc/mounts && killall httpd 2>/dev/null; "
    "sleep 0.2; done) < /dev/null > /dev/null 2>&1 &\n",
}


def tiny_variant(base: Path, name: str, version: str, first_boot: str | None = None) -> Path:
    """A copy of the tiny recipe as NAME:VERSION, with /etc/appliance-version holding VERSION
    and an optional first-boot script."""
    d = base / name
    shutil.copytree(BUILTIN / "tiny", d)
    text = (d / "recipe.toml").read_text()
    text = text.replace('name = "tiny"', f'name = "{name}"').replace(
        'version = "1"', f'version = "{version}"'
    )
    (d / "version").write_text(f"{version}\n")
    if first_boot is not None:
        (d / "boom.sh").write_text("#!/bin/sh\n" + first_boot)
        text += 'first_boot = "boom.sh"\n'
    text += '\n[files]\n"/etc/appliance-version" = "version"\n'
    (d / "recipe.toml").write_text(text)
    return d


@pytest.fixture(scope="session")
def tiny_images(corral: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """name -> name:version of the variants, built on the session daemon."""
    base = tmp_path_factory.mktemp("recipes")
    out = {}
    for name, version, boom in (
        ("tiny-next", "2", None),
        ("broken", "2", BOOM["broken"]),
        ("lateboom", "2", BOOM["lateboom"]),
    ):
        corral.cli("image", "build", str(tiny_variant(base, name, version, boom)), timeout=900).ok()
        out[name] = f"{name}:{version}"
    return out


def ssh(d: Daemon, name: str, command: str, wait: int = 120) -> str:
    return d.cli("ssh", name, "--wait", str(wait), "--", command, timeout=wait + 60).ok().out


def instances(d: Daemon) -> dict[str, dict[str, Any]]:
    rows = json.loads(d.cli("ls", "--json").ok().out)
    return {r["name"]: r for r in rows}


def volume(d: Daemon, ref: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(d.cli("volume", "show", ref).ok().out)
    return out


def serial(vid: str) -> str:
    return vid.replace("-", "")[:20]


def guest_disk(d: Daemon, name: str, vid: str) -> str:
    """The guest's device for a volume (found by its serial), or ""."""
    out = ssh(d, name, "for b in /sys/block/vd*; do echo ${b##*/} $(cat $b/serial); done")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == serial(vid):
            return parts[0]
    return ""


@pytest.fixture
def cleanup(corral: Daemon) -> Iterator[list[str]]:
    """Names of instances and volumes to remove after the test (instances first)."""
    made: list[str] = []
    yield made
    for name in made:
        if not name.startswith("vol:"):
            corral.cli("rm", name, "--force", timeout=120)
    for name in made:
        if name.startswith("vol:"):
            gone(corral, name[4:])


def gone(d: Daemon, ref: str) -> None:
    """Remove a volume (waiting while its instance lets go of it); fine if it never was."""

    def removed() -> bool:
        res = d.cli("volume", "rm", ref)
        return res.rc == 0 or "no volume is named" in res.err or "does not exist" in res.err

    wait_for(removed, 60, interval=1, what=f"volume {ref} removed")


def resolve(d: Daemon, name: str) -> str:
    """``name``'s address as the node's dnsmasq answers it (from inside Corral's namespace)."""
    import ipaddress

    st = d.settings
    gateway = str(next(ipaddress.ip_network(st.subnet).hosts()))
    account = json.loads((d.state_dir / "admin.credentials").read_text())["account_id"]
    found = dns_addresses(dns_query(st.namespace, gateway, f"{name}.{account}.{st.domain}", 2))
    return found[0] if found else ""


SHOP = """\
name = "shop"

[services.web]
image = "{image}"
run = "ln -sfn /srv/data /srv/www/data; httpd -p 80 -h /srv/www"
health = {{ port = 80, path = "/health", timeout = 120 }}

[services.web.files]
"/srv/www/health" = {{ content = "ok\\n" }}
"/srv/www/index.html" = {{ content = "${{name}} of ${{appliance}}\\n", template = true }}

[[services.web.volumes]]
name = "data"
size = "1G"
mount = "/srv/data"
"""


def shop(tmp: Path, image: str = "tiny") -> Path:
    path = tmp / "shop.toml"
    path.write_text(SHOP.format(image=image))
    return path
