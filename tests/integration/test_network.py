"""Three instances at once: distinct addresses, each reaches the others by name (bare through
its account's search domain, and qualified by account)."""

from __future__ import annotations

import json

from tests.harness import Daemon


def test_three_instances_get_distinct_addresses_and_resolve_each_other(corral: Daemon) -> None:
    names = ["net-a", "net-b", "net-c"]
    for n in names:
        corral.cli("run", "tiny", "--name", n, "--memory", "128M", "--no-wait").ok()
    for n in names:
        ops = corral.client().operation_list(
            target=json.loads(corral.cli("show", n, "--json").ok().out)["id"]
        )
        corral.cli("op", "wait", ops[0].id, timeout=120).ok()
    infos = {n: json.loads(corral.cli("show", n, "--json").ok().out) for n in names}
    addresses = {i["private_ip"] for i in infos.values()}
    assert len(addresses) == 3
    domain = corral.settings.domain
    for n in names:  # every guest booted and configured before any pings another
        corral.cli("ssh", n, "--wait", "300", "--", "true", timeout=400).ok()
    for n in names:
        for other in names:
            if other == n:
                continue
            fqdn = infos[other]["hostname"]
            assert fqdn.startswith(f"{other}.") and fqdn.endswith(f".{domain}")
            out = corral.ssh(n, f"ping -c 1 -W 2 {other} && nslookup {fqdn}").ok().out
            assert infos[other]["private_ip"] in out
    # the instance id is a DNS name too
    out = corral.ssh("net-a", f"nslookup {infos['net-b']['id']}.{domain}").ok().out
    assert infos["net-b"]["private_ip"] in out
    # a rename reaches DNS at once: the new name resolves, the old one is gone
    zone = infos["net-c"]["hostname"].removeprefix("net-c.")
    assert f"net-z.{zone}" in corral.cli("rename", "net-c", "net-z").ok().out
    res = corral.ssh("net-a", f"nslookup net-z.{zone}; nslookup net-c.{zone} || echo OLD-GONE")
    assert infos["net-c"]["private_ip"] in res.out and "OLD-GONE" in res.out
    names[2] = "net-z"
    corral.cli("rm", "--force", *names).ok()
    # terminated names leave DNS
    hosts = (corral.state_dir / "networks").glob("*/hosts")
    assert not any("net-a" in h.read_text() for h in hosts)
