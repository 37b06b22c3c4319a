"""VPCs and subnets over the native REST API (what `corral vpc` / `corral subnet` and
`corral run --subnet` send): the default VPC holds the node network, bad input named with
the field, nothing changed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.postgres


async def _wait(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    op = body["operation"]
    r = await api.get(f"/v1/operations/{op['id']}/wait", params={"timeout": 10})
    assert r.json()["status"] == "succeeded", r.text


async def test_vpcs_subnets_and_run_with_a_subnet(api: httpx.AsyncClient) -> None:
    vpcs = (await api.get("/v1/vpcs")).json()
    assert len(vpcs) == 1 and vpcs[0]["is_default"]
    # the configured node network is 10.88.0.0/24: its /16 is the default VPC
    assert vpcs[0]["cidr"] == "10.88.0.0/16" and vpcs[0]["internet_gateway"].startswith("igw-")
    default_subnet = vpcs[0]["subnets"][0]
    shown = (await api.get(f"/v1/subnets/{default_subnet}")).json()
    assert shown["cidr"] == "10.88.0.0/24" and shown["instances"] == []
    r = await api.post("/v1/instances", json={"image": "tiny", "subnet": default_subnet})
    assert r.status_code == 202, r.text
    await _wait(api, r.json())
    inst = r.json()["instance"]
    assert inst["subnet_id"] == default_subnet
    shown = (await api.get(f"/v1/subnets/{default_subnet}")).json()
    assert shown["instances"] == [inst["id"]]
    gone = await api.delete(f"/v1/subnets/{default_subnet}")
    assert gone.status_code == 409 and gone.json()["error"]["field"] == "subnet"

    made = await api.post("/v1/vpcs", json={"cidr": "10.0.0.0/16"})
    assert made.status_code == 201, made.text
    vid = made.json()["id"]
    assert made.json()["dns_hostnames"] is True  # names, unlike EC2's CreateVpc
    off = await api.patch(f"/v1/vpcs/{vid}", json={"dns_hostnames": False})
    assert off.status_code == 200 and off.json()["dns_hostnames"] is False, off.text
    on = await api.patch(f"/v1/vpcs/{vid}", json={"dns_hostnames": True})
    assert on.json()["dns_hostnames"] is True
    default_off = await api.patch(f"/v1/vpcs/{vpcs[0]['id']}", json={"dns_hostnames": False})
    assert default_off.status_code == 400, default_off.text
    assert default_off.json()["error"]["field"] == "dns_hostnames"
    bad = await api.post("/v1/vpcs", json={"cidr": "10.0.0.0/8"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "CidrBlock"
    sub = await api.post("/v1/subnets", json={"vpc": vid, "cidr": "10.0.1.0/24"})
    assert sub.status_code == 201, sub.text
    sid = sub.json()["id"]
    clash = await api.post("/v1/subnets", json={"vpc": vid, "cidr": "10.0.1.0/25"})
    assert clash.status_code == 400 and "conflicts" in clash.json()["error"]["message"]
    outside = await api.post("/v1/subnets", json={"vpc": vid, "cidr": "10.9.0.0/24"})
    assert outside.status_code == 400 and "not inside" in outside.json()["error"]["message"]
    # `corral run --subnet`: the instance runs in the VPC's own network, addressed from it
    r = await api.post("/v1/instances", json={"image": "tiny", "subnet": sid})
    assert r.status_code == 202, r.text
    await _wait(api, r.json())
    vinst = r.json()["instance"]
    assert vinst["subnet_id"] == sid and vinst["private_ip"].startswith("10.0.1.")
    # its group is its VPC's default; a group of the VPC is made with `vpc`; the default
    # VPC's groups are refused for an instance of this one, by field
    groups = {g["id"]: g for g in (await api.get("/v1/security-groups")).json()}
    [vdefault] = [g for g in groups.values() if g["vpc"] == vid]
    assert vdefault["name"] == "default"
    web = await api.post("/v1/security-groups", json={"name": "web", "vpc": vid})
    assert web.status_code == 201 and web.json()["vpc"] == vid, web.text
    mixed = await api.post(
        "/v1/instances", json={"image": "tiny", "subnet": sid, "security_groups": ["default"]}
    )
    assert mixed.status_code == 202, mixed.text  # "default": its VPC's default group
    await _wait(api, mixed.json())
    done = await api.delete(f"/v1/instances/{mixed.json()['instance']['id']}")
    assert done.status_code == 202, done.text
    await _wait(api, done.json())
    main = next(g["id"] for g in groups.values() if g["vpc"] is None and g["name"] == "default")
    wrong = await api.post(
        "/v1/instances", json={"image": "tiny", "subnet": sid, "security_groups": [main]}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "security_groups"
    assert (await api.delete(f"/v1/subnets/{sid}")).status_code == 409  # it has an instance
    # a second subnet of the VPC on the same node: its instance joins the VPC's namespace
    sub2 = await api.post("/v1/subnets", json={"vpc": vid, "cidr": "10.0.2.0/24"})
    sid2 = sub2.json()["id"]
    r2 = await api.post("/v1/instances", json={"image": "tiny", "subnet": sid2})
    assert r2.status_code == 202, r2.text
    await _wait(api, r2.json())
    for iid in (vinst["id"], r2.json()["instance"]["id"]):
        gone = await api.delete(f"/v1/instances/{iid}")
        assert gone.status_code == 202, gone.text
        await _wait(api, gone.json())
    assert (await api.delete(f"/v1/subnets/{sid2}")).status_code == 204
    assert (
        len([i for i in (await api.get("/v1/instances")).json() if i["state"] != "terminated"]) == 1
    )
    assert (await api.delete(f"/v1/vpcs/{vid}")).status_code == 409  # it has a subnet
    assert (await api.delete(f"/v1/subnets/{sid}")).status_code == 204
    assert (await api.delete(f"/v1/vpcs/{vid}")).status_code == 409  # its group "web"
    assert (await api.delete(f"/v1/security-groups/{web.json()['id']}")).status_code == 204
    assert (await api.delete(f"/v1/vpcs/{vid}")).status_code == 204
    assert (await api.get(f"/v1/vpcs/{vid}")).status_code == 404
    assert [s["id"] for s in (await api.get("/v1/subnets")).json()] == [default_subnet]
