"""Characters XML 1.0 forbids: refused in every EC2 parameter (InvalidParameterValue naming it),
never written into an answer (so one bad name cannot make an account's Describe* unparseable);
and methods the Query API does not speak answer as EC2, not as the REST API."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
from sqlalchemy import select, update

from corral.api.ec2 import xml
from corral.store.models import SecurityGroup
from tests.unit.ec2.conftest import World

FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
BAD = ["a\ufffeb", "a\x01b", "\x00", "a\uffffb", "a\x1fb"]


@pytest.mark.parametrize("bad", BAD)
async def test_forbidden_characters_are_refused_naming_the_parameter(
    world: World, bad: str
) -> None:
    ec2 = world.admin
    err = await ec2.fails(
        "InvalidParameterValue", "CreateSecurityGroup", GroupName="g", Description=bad
    )
    assert "GroupDescription" in err.message and "XML 1.0" in err.message
    groups = await ec2.call("DescribeSecurityGroups")
    assert [g["GroupName"] for g in groups["SecurityGroups"]] == ["default"]
    iid = (await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1))[
        "Instances"
    ][0]["InstanceId"]
    err = await ec2.fails(
        "InvalidParameterValue",
        "CreateTags",
        Resources=[iid],
        Tags=[{"Key": "Name", "Value": bad}],
    )
    assert "Tag.1.Value" in err.message
    await ec2.fails("InvalidParameterValue", "CreateKeyPair", KeyName=bad)
    await world.settle()


async def test_tabs_and_newlines_are_fine(world: World) -> None:
    ec2 = world.admin
    await ec2.call("CreateSecurityGroup", GroupName="g", Description="two\tlines\r\nok")
    out = await ec2.call("DescribeSecurityGroups", GroupNames=["g"])
    assert out["SecurityGroups"][0]["Description"] == "two\tlines\nok"  # XML normalises CRLF


async def test_text_stored_before_the_check_still_makes_parseable_answers(world: World) -> None:
    """The writer's last guard: a description already in the store (from an older Corral)."""
    ec2 = world.admin
    await ec2.call("CreateSecurityGroup", GroupName="g", Description="ok")
    async with world.ctrl.store.write() as s:
        await s.execute(
            update(SecurityGroup)
            .where(SecurityGroup.name == "g")
            .values(description="bad\ufffe\x01end")
        )
        assert await s.scalar(select(SecurityGroup.id).where(SecurityGroup.name == "g"))
    world.ctrl.store.generation += 1  # the answer cache keys on it
    resp = await ec2.raw("DescribeSecurityGroups")
    assert resp.status_code == 200
    ET.fromstring(resp.content)  # parses
    out = ec2.parse("DescribeSecurityGroups", resp)
    descs = {g["GroupName"]: g["Description"] for g in out["SecurityGroups"]}
    assert descs["g"] == "bad\ufffd\ufffdend"


def test_writer_replaces_every_forbidden_character() -> None:
    text = "".join(chr(c) for c in range(0x20)) + "\ud800\udfff\ufffe\uffff ok"
    body = xml.response("Test", "rid", {"value": text, "items": [text], "nested": {"v": text}})
    root = ET.fromstring(body)
    ns = {"e": xml.NAMESPACE}
    value = root.findtext("e:value", namespaces=ns)
    assert value is not None and value.endswith("\ufffd\ufffd\ufffd\ufffd ok")
    assert "\t" in value and "\n" in value
    ET.fromstring(xml.error("Code\x01", "message \ufffe", "rid"))


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_on_the_ec2_endpoint_answer_ec2_xml(world: World, method: str) -> None:
    ec2 = world.admin
    body = urlencode({"Action": "DescribeInstances", "Version": "2016-11-15"}).encode()
    resp = await ec2.send(ec2.sign(method, body, headers=FORM))
    assert resp.status_code == 405
    assert resp.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(resp.content)
    assert root.findtext("Errors/Error/Code") == "UnsupportedHttpVerb"
    assert method in (root.findtext("Errors/Error/Message") or "")
    assert root.findtext("RequestID")
