"""Appliances on real VMs (tiny): `corral apply` twice, the second a no-op; `corral replace`
with a newer image keeps the data, the private address and the DNS name; a new instance that
fails its health check, before or after taking over, is rolled back; a daemon killed in the
middle of a replace finishes it when it comes back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, wait_for
from tests.integration.volumes.conftest import gone, instances, resolve, shop, ssh, volume


@pytest.fixture
def web(corral: Daemon, tmp_path: Path) -> Iterator[Path]:
    """The shop appliance applied: one tiny web server with a data volume holding a file."""
    path = shop(tmp_path)
    try:
        out = corral.cli("apply", str(path), timeout=300).ok().out
        assert "+ create web" in out and "create web-data (1G" in out
        ssh(corral, "web", "echo precious > /srv/data/file && sync")
        yield path
    finally:
        corral.cli("rm", "web", "--force", timeout=120)
        for name, inst in instances(corral).items():
            if name.startswith("web-next-"):
                corral.cli("rm", inst["id"], "--force", timeout=120)
        gone(corral, "web-data")


def _webs(d: Daemon) -> set[str]:
    return {n for n in instances(d) if n.startswith("web")}


def _state(d: Daemon) -> tuple[str, str, str]:
    inst = instances(d)["web"]
    return inst["id"], inst["private_ip"], resolve(d, "web")


def test_apply_twice_the_second_run_changes_nothing(corral: Daemon, web: Path) -> None:
    before = _state(corral)
    out = corral.cli("apply", str(web)).ok().out
    assert "= unchanged web" in out and "no changes" in out
    assert _state(corral) == before
    served = ssh(
        corral,
        "web",
        "wget -q -O - http://127.0.0.1/; wget -q -O - "
        "http://127.0.0.1/data/file; cat /var/log/corral-appliance.log",
    )
    assert "web of shop" in served and "precious" in served
    assert "mounted data" in served
    vol = volume(corral, "web-data")
    assert vol["attachment"]["instance_name"] == "web" and not vol["delete_on_termination"]


def test_replace_with_a_newer_image_keeps_data_address_and_name(
    corral: Daemon, web: Path, tiny_images: dict[str, str]
) -> None:
    old_id, address, dns_before = _state(corral)
    assert dns_before == address
    out = corral.cli("replace", "web", "--image", tiny_images["tiny-next"], timeout=600).ok().out
    assert f"at {address}" in out and f"{old_id} was terminated" in out
    new_id, new_address, dns_after = _state(corral)
    assert new_id != old_id and (new_address, dns_after) == (address, address)
    got = ssh(
        corral,
        "web",
        "cat /etc/appliance-version /srv/data/file; hostname; "
        "wget -q -O - http://127.0.0.1/data/file",
    )
    assert got.split() == ["2", "precious", "web", "precious"]
    assert volume(corral, "web-data")["attachment"]["instance_id"] == new_id
    # the old one and the temporary name are gone
    wait_for(lambda: _webs(corral) == {"web"}, 60, what="the old instance removed")
    # the file still names tiny: apply would put it back (a plan, not run here)
    plan = corral.cli("apply", str(web), "--plan").ok().out
    assert "~ replace web" in plan and "tiny-next:2 -> tiny:1" in plan


@pytest.mark.parametrize("image,when", [("broken", "before"), ("lateboom", "after")])
def test_a_new_instance_failing_its_health_check_is_rolled_back(
    corral: Daemon, web: Path, tiny_images: dict[str, str], image: str, when: str
) -> None:
    old_id, address, _ = _state(corral)
    # "broken" never serves, so its check fails however long it is given: 10 s of failing
    # checks show it as well as 30. "lateboom" must first pass its check beside the old one
    # (a tiny boot on a loaded machine) within --timeout, so that stays 30 s; once it has
    # the data its server is dead, and 10 s of failing checks at the old address show that
    # as well as the 30 it used to get (--after-timeout, default: --timeout)
    timeouts = (
        ["--timeout", "10"] if when == "before" else ["--timeout", "30", "--after-timeout", "10"]
    )
    res = corral.cli("replace", "web", "--image", tiny_images[image], *timeouts, timeout=600)
    assert res.rc != 0 and "failed its health check" in res.err
    assert "did not start" not in res.err  # it ran and its check itself failed
    assert ("runs on, unchanged" if when == "before" else "rolled back") in res.err
    assert _state(corral) == (old_id, address, address)
    assert instances(corral)["web"]["state"] == "running"
    got = wait_for(
        lambda: ssh(
            corral, "web", "cat /srv/data/file; wget -q -O - http://127.0.0.1/health"
        ).split(),
        60,
        what="the old server serving again",
    )
    assert got == ["precious", "ok"]
    assert volume(corral, "web-data")["attachment"]["instance_id"] == old_id
    wait_for(lambda: _webs(corral) == {"web"}, 60, what="the new instance removed")


def test_a_daemon_killed_during_a_replace_finishes_it_after_a_restart(
    corral: Daemon, web: Path, tiny_images: dict[str, str]
) -> None:
    old_id, address, _ = _state(corral)
    c = corral.client()
    from corral import models

    acc = c.instance_replace("web", models.ReplaceRequest(image=tiny_images["tiny-next"]))
    assert acc.operation is not None
    op_id = acc.operation.id
    # kill -9 once the old instance is being stopped: the new one runs beside it, nothing
    # has moved yet
    wait_for(
        lambda: "stopping the old" in c.operation_show(op_id).message,
        180,
        interval=0.05,
        what="the cutover",
    )
    corral.kill9()  # returns once the daemon has been reaped
    corral.start()
    c = corral.client()
    done = wait_for(
        lambda: (o := c.operation_show(op_id)).status in ("succeeded", "failed") and o,
        300,
        interval=1,
        what="the resumed replace",
    )
    assert done.status == "succeeded", done.error
    new_id, new_address, dns_after = _state(corral)
    assert new_id != old_id and (new_address, dns_after) == (address, address)
    assert ssh(corral, "web", "cat /etc/appliance-version /srv/data/file").split() == [
        "2",
        "precious",
    ]
    wait_for(lambda: _webs(corral) == {"web"}, 60, what="the old instance removed")
