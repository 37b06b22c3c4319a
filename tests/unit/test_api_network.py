"""The native API for what EC2 had first (security groups, elastic addresses, tags, instance
types, zones): through the REST app over the fake-node controller, the same controller paths
(and so the same rules) as EC2's calls, errors naming the REST body's field; the CLI commands
against the unit app served on a loopback port."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.unit.test_api_rest import _error, _run
from tests.unit.test_cli_errors import cli, corral, served  # noqa: F401 (fixtures)


async def _other(api: httpx.AsyncClient) -> httpx.AsyncClient:
    made = (await api.post("/v1/accounts", json={"name": "mallory"})).json()
    key = made["key"]
    return httpx.AsyncClient(
        transport=api._transport,
        base_url="http://corral.test",
        headers={"Authorization": f"Bearer {key['access_key_id']}:{key['secret_access_key']}"},
    )


# -- security groups --------------------------------------------------------------------------
async def test_security_group_lifecycle_create_allow_show_revoke_remove(
    api: httpx.AsyncClient,
) -> None:
    resp = await api.post("/v1/security-groups", json={"name": "web", "tags": {"env": "prod"}})
    assert resp.status_code == 201, resp.text
    group = resp.json()
    assert group["id"].startswith("sg-") and group["description"] == "web"
    assert group["tags"] == {"env": "prod"}
    assert [(r["direction"], r["protocol"], r["cidr"]) for r in group["rules"]] == [
        ("egress", "-1", "0.0.0.0/0")
    ]
    resp = await api.post(
        "/v1/security-groups/web/rules", json={"from_port": 22, "cidr": "10.9.8.7/8"}
    )
    assert resp.status_code == 201, resp.text
    ssh = resp.json()
    # as EC2's AuthorizeSecurityGroupIngress: one port, host bits dropped
    assert (ssh["protocol"], ssh["from_port"], ssh["to_port"], ssh["cidr"]) == (
        "tcp",
        22,
        22,
        "10.0.0.0/8",
    )
    icmp = (
        await api.post(
            f"/v1/security-groups/{group['id']}/rules",
            json={"protocol": "icmp", "source_group": "default"},
        )
    ).json()
    assert (icmp["from_port"], icmp["to_port"], icmp["source_group"]) == (
        -1,
        -1,
        icmp["source_group"],
    )
    assert icmp["source_group"].startswith("sg-")
    shown = (await api.get("/v1/security-groups/web")).json()
    assert {r["id"] for r in shown["rules"]} >= {ssh["id"], icmp["id"]}
    listed = (await api.get("/v1/security-groups")).json()
    assert [g["name"] for g in listed] == ["default", "web"]
    # a duplicate is refused like EC2's InvalidPermission.Duplicate
    dup = await api.post(
        "/v1/security-groups/web/rules", json={"from_port": 22, "cidr": "10.0.0.0/8"}
    )
    _error(dup, 409, "exists", None, "security_group_rule")
    # revoke by permission, then by id
    resp = await api.post(
        "/v1/security-groups/web/rules/revoke", json={"from_port": 22, "cidr": "10.0.0.0/8"}
    )
    assert resp.status_code == 204, resp.text
    resp = await api.delete(f"/v1/security-groups/web/rules/{icmp['id']}")
    assert resp.status_code == 204, resp.text
    gone = await api.delete(f"/v1/security-groups/web/rules/{icmp['id']}")
    _error(gone, 404, "not_found", "rule_id", "security_group_rule")
    rules = (await api.get("/v1/security-groups/web")).json()["rules"]
    assert [r["direction"] for r in rules] == ["egress"]
    assert (await api.delete("/v1/security-groups/web")).status_code == 204
    _error(await api.get("/v1/security-groups/web"), 404, "not_found", "group", "security_group")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"from_port": 22, "cidr": "10.0.0.300/8"}, "cidr", "not a valid CIDR"),
        ({"from_port": 70000, "cidr": "0.0.0.0/0"}, "from_port", "0-65535"),
        ({"cidr": "0.0.0.0/0"}, "from_port", "FromPort and ToPort"),
        ({"protocol": "gre", "cidr": "0.0.0.0/0"}, "protocol", "tcp, udp, icmp"),
        ({"from_port": 22}, "cidr", "exactly one source"),
        ({"from_port": 22, "source_group": "nosuch"}, "source_group", "nosuch"),
        ({"from_port": 22, "cidr": "0.0.0.0/0", "port": 5}, "port", "Extra inputs"),
        ({"direction": "sideways", "from_port": 22, "cidr": "0.0.0.0/0"}, "direction", "ingress"),
    ],
)
async def test_a_bad_rule_is_refused_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str, words: str
) -> None:
    before = (await api.get("/v1/security-groups/default")).json()["rules"]
    resp = await api.post("/v1/security-groups/default/rules", json=body)
    assert resp.status_code in (400, 404), resp.text
    err = resp.json()["error"]
    assert err["field"] == field, err
    assert words in err["message"], err
    assert (await api.get("/v1/security-groups/default")).json()["rules"] == before


async def test_security_group_names_and_removal_follow_ec2s_rules(
    api: httpx.AsyncClient,
) -> None:
    _error(await api.post("/v1/security-groups", json={"name": "default"}), 400, "invalid", "name")
    _error(await api.post("/v1/security-groups", json={"name": "sg-web"}), 400, "invalid", "name")
    _error(await api.post("/v1/security-groups", json={"name": ""}), 400, "invalid", "name")
    assert (await api.post("/v1/security-groups", json={"name": "db"})).status_code == 201
    _error(
        await api.post("/v1/security-groups", json={"name": "db"}),
        409,
        "exists",
        "name",
        "security_group",
    )
    err = _error(
        await api.delete("/v1/security-groups/default"),
        409,
        "wrong_state",
        "group",
        "security_group",
    )
    assert "default" in err["message"]
    await _run(api, name="web1", security_groups=["db"])
    err = _error(
        await api.delete("/v1/security-groups/db"), 409, "wrong_state", None, "security_group"
    )
    assert "terminate them first" in err["message"]


async def test_another_accounts_groups_and_addresses_are_not_found(
    api: httpx.AsyncClient,
) -> None:
    group = (await api.post("/v1/security-groups", json={"name": "web"})).json()
    addr = (await api.post("/v1/addresses", json={})).json()
    async with await _other(api) as other:
        for ref in ("web", group["id"]):
            _error(
                await other.get(f"/v1/security-groups/{ref}"),
                404,
                "not_found",
                "group",
                "security_group",
            )
            _error(
                await other.delete(f"/v1/security-groups/{ref}"),
                404,
                "not_found",
                "group",
                "security_group",
            )
        _error(
            await other.delete(f"/v1/addresses/{addr['id']}"),
            404,
            "not_found",
            "address",
            "allocation",
        )
        assert [g["name"] for g in (await other.get("/v1/security-groups")).json()] == ["default"]
        assert (await other.get("/v1/addresses")).json() == []
        resp = await other.post("/v1/tags", json={"resources": [group["id"]], "tags": {"a": "b"}})
        _error(resp, 404, "not_found", "resources", "security_group")


# -- elastic addresses ------------------------------------------------------------------------
async def test_address_allocate_associate_disassociate_release(api: httpx.AsyncClient) -> None:
    inst = await _run(api, name="web1")
    resp = await api.post("/v1/addresses", json={"tags": {"role": "front"}})
    assert resp.status_code == 201, resp.text
    addr = resp.json()
    assert addr["id"].startswith("eipalloc-") and addr["public_ip"].startswith("198.51.100.")
    assert addr["tags"] == {"role": "front"} and addr["instance_id"] is None
    resp = await api.post(f"/v1/addresses/{addr['public_ip']}/associate", json={"instance": "web1"})
    assert resp.status_code == 200, resp.text
    bound = resp.json()
    assert (bound["instance_id"], bound["instance_name"], bound["private_ip"]) == (
        inst["id"],
        "web1",
        inst["private_ip"],
    )
    assert bound["association_id"].startswith("eipassoc-")
    err = _error(
        await api.delete(f"/v1/addresses/{addr['id']}"), 409, "wrong_state", None, "allocation"
    )
    assert "disassociate it first" in err["message"]
    _error(
        await api.post(f"/v1/addresses/{addr['id']}/associate", json={"instance": "nosuch"}),
        404,
        "not_found",
        "instance",
        "instance",
    )
    resp = await api.post(f"/v1/addresses/{addr['id']}/disassociate")
    assert resp.status_code == 200 and resp.json()["instance_id"] is None
    assert (await api.delete(f"/v1/addresses/{addr['id']}")).status_code == 204
    assert (await api.get("/v1/addresses")).json() == []
    _error(await api.get(f"/v1/addresses/{addr['id']}"), 404, "not_found", "address", "allocation")


# -- tags, types, zones -----------------------------------------------------------------------
async def test_tags_set_list_and_remove_on_any_resource(api: httpx.AsyncClient) -> None:
    inst = await _run(api, name="web1")
    group = (await api.post("/v1/security-groups", json={"name": "web"})).json()
    both = [inst["id"], group["id"]]
    resp = await api.post("/v1/tags", json={"resources": both, "tags": {"service": "shop"}})
    assert resp.status_code == 204, resp.text
    rows = (await api.get("/v1/tags", params={"resource": both})).json()
    assert sorted((t["resource_type"], t["key"], t["value"]) for t in rows) == [
        ("instance", "service", "shop"),
        ("security-group", "service", "shop"),
    ]
    resp = await api.post("/v1/tags/remove", json={"resources": [inst["id"]], "keys": ["service"]})
    assert resp.status_code == 204
    assert [t["resource_id"] for t in (await api.get("/v1/tags")).json()] == [group["id"]]
    _error(
        await api.post("/v1/tags", json={"resources": [inst["id"]], "tags": {"aws:x": "1"}}),
        400,
        "invalid",
        "tags",
    )
    _error(
        await api.post("/v1/tags", json={"resources": ["web1"], "tags": {"a": "1"}}),
        400,
        "invalid",
        "resources",
    )


async def test_instance_types_and_zones_are_listed(api: httpx.AsyncClient) -> None:
    types = {t["name"]: t for t in (await api.get("/v1/instance-types")).json()}
    assert types["cr1.nano"] == {
        "name": "cr1.nano",
        "vcpus": 1,
        "cores": 0.2,
        "memory": 128 << 20,
        "burstable": True,
        "description": "1 vCPU capped at 0.2 of a core, 128 MiB",
    }
    zones = (await api.get("/v1/zones")).json()
    assert len(zones) == 1 and zones[0]["state"] == "available" and zones[0]["nodes"] == 1


async def test_the_new_resources_need_credentials(anonymous: httpx.AsyncClient) -> None:
    for path in ("/v1/security-groups", "/v1/addresses", "/v1/tags", "/v1/zones"):
        _error(await anonymous.get(path), 401, "unauthorized")


# -- the CLI ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("cli")
def test_cli_sg_ip_tag_type_zone(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = corral(capsys, "sg", "create", "shop", "-d", "the shop", "--tag", "env=prod")
    assert code == 0 and "security group shop created (sg-" in out, out
    code, out = corral(capsys, "sg", "allow", "shop", "--port", "8000-8100", "--cidr", "0.0.0.0/0")
    assert code == 0 and "allows ingress tcp 8000-8100 0.0.0.0/0" in out, out
    code, out = corral(capsys, "sg", "allow", "shop", "--port", "eighty", "--cidr", "0.0.0.0/0")
    assert code == 1 and "--port 'eighty'" in out, out
    code, out = corral(capsys, "sg", "allow", "shop", "--port", "22", "--cidr", "1.2.3/99")
    assert code == 1 and "is not a valid CIDR block" in out and "[cidr]" in out, out
    code, out = corral(capsys, "sg", "show", "shop", "--json")
    group = json.loads(out)
    rule = next(r for r in group["rules"] if r["from_port"] == 8000)
    assert (rule["to_port"], group["tags"]) == (8100, {"env": "prod"})
    code, out = corral(capsys, "sg", "ls")
    assert code == 0 and "shop" in out and "default" in out
    code, out = corral(capsys, "sg", "revoke", "shop", rule["id"])
    assert code == 0, out
    code, out = corral(capsys, "sg", "revoke", "shop", "--port", "22", "--cidr", "0.0.0.0/0")
    assert code == 1 and "does not exist" in out, out
    code, out = corral(capsys, "sg", "rm", "shop")
    assert code == 0, out

    code, out = corral(capsys, "run", "tiny", "--name", "eipweb")
    assert code == 0, out
    code, out = corral(capsys, "ip", "allocate")
    assert code == 0 and "allocated (eipalloc-" in out, out
    ip = out.split()[1]
    code, out = corral(capsys, "ip", "associate", ip, "eipweb")
    assert code == 0 and f"address {ip} -> eipweb" in out, out
    code, out = corral(capsys, "ip", "release", ip)
    assert code == 1 and "disassociate it first" in out, out
    code, out = corral(capsys, "ip", "ls")
    assert ip in out and "eipweb" in out
    assert corral(capsys, "ip", "disassociate", ip)[0] == 0
    assert corral(capsys, "ip", "release", ip)[0] == 0

    code, out = corral(capsys, "tag", "set", "eipweb", "service=shop", "tier=web")
    assert code == 0, out
    code, out = corral(capsys, "tag", "ls", "eipweb", "--json")
    assert {(t["key"], t["value"]) for t in json.loads(out)} == {
        ("service", "shop"),
        ("tier", "web"),
    }
    code, out = corral(capsys, "tag", "set", "eipweb", "novalue")
    assert code == 1 and "KEY=VALUE" in out
    assert corral(capsys, "tag", "rm", "eipweb", "--all")[0] == 0
    assert json.loads(corral(capsys, "tag", "ls", "eipweb", "--json")[1]) == []

    code, out = corral(capsys, "type", "ls")
    assert code == 0 and "cr1.nano" in out and "0.2" in out
    code, out = corral(capsys, "zone", "ls", "--json")
    assert code == 0 and json.loads(out)[0]["state"] == "available"
