"""The metadata service tells an instance its security groups' names (was always "default")."""

from __future__ import annotations

import httpx

from corral.api import metadata
from tests.unit.ec2.conftest import World


async def test_metadata_lists_the_instances_groups(world: World) -> None:
    ec2 = world.admin
    await ec2.call("CreateSecurityGroup", GroupName="web", Description="web")
    out = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SecurityGroups=["web", "default"],
    )
    inst = out["Instances"][0]
    await world.settle()
    app = metadata.create_app(
        world.ctrl,
        (await world.ctrl.instances.get(await world.caller(ec2), inst["InstanceId"])).network_id
        or "",
        b"k" * 32,
    )
    transport = httpx.ASGITransport(app=app, client=(inst["PrivateIpAddress"], 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://169.254.169.254") as c:
        r = await c.get("/latest/meta-data/security-groups")
        assert r.status_code == 200 and r.text.split("\n") == ["default", "web"]
        r = await c.get("/latest/meta-data/instance-type")
        assert r.text == "cr1.micro"
