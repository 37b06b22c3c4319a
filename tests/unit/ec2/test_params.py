"""No parameter is ever ignored: every action declares what it accepts; AWS's own parameters it
does not do answer UnsupportedOperation naming them, any other name UnknownParameter. Checked
for every registered action against botocore's model of the EC2 API (the oracle of what AWS
has), through the real endpoint; and the forms AWS accepts for lists (un-indexed, index 0)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import botocore.session
import pytest

from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.params import ParamSpec
from corral.api.ec2.registry import ACTIONS, PARAMS
from tests.unit.ec2.conftest import Ec2, World

_MODEL = botocore.session.get_session().get_service_model("ec2")
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
# names Corral takes that AWS's wire does not use: what some clients send instead
ALIASES = {"RunInstances": {"NetworkInterface.N.Groups.N"}}


def aws_parameters(action: str) -> list[str]:
    """Every parameter of ``action`` on AWS's wire, lists as ``.N`` (botocore's serializer:
    the query name, else the capitalised location name, else the member name)."""
    out: list[str] = []

    def walk(shape: Any, prefix: str, depth: int) -> None:
        for member, ms in shape.members.items():
            wire = ms.serialization.get("queryName") or ms.serialization.get("name", "")
            wire = (wire[:1].upper() + wire[1:]) if wire else member
            name = prefix + wire
            if ms.type_name == "list":
                name += ".N"
                if ms.member.type_name == "structure" and depth < 5:
                    walk(ms.member, name + ".", depth + 1)
                    continue
            elif ms.type_name == "structure" and depth < 5:
                walk(ms, name + ".", depth + 1)
                continue
            out.append(name)

    walk(_MODEL.operation_model(action).input_shape, "", 0)
    return out


def concrete(pattern: str) -> str:
    segs = {"N": "1", "*": "Field"}
    return ".".join(segs.get(seg, seg) for seg in pattern.split("."))


async def send(ec2: Ec2, pairs: list[tuple[str, str]]) -> tuple[int, ET.Element]:
    resp = await ec2.send(ec2.sign("POST", urlencode(pairs).encode(), headers=FORM))
    return resp.status_code, ET.fromstring(resp.content)


def error_of(doc: ET.Element) -> tuple[str, str]:
    return doc.findtext(".//Code") or "", doc.findtext(".//Message") or ""


ACTION_NAMES = sorted(ACTIONS)


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_every_aws_parameter_is_accepted_or_refused_as_unsupported(action: str) -> None:
    spec = PARAMS[action]
    for name in aws_parameters(action):
        try:
            spec.canonical(action, concrete(name))
        except Ec2Error as err:
            assert err.code == "UnsupportedOperation", f"{action} {name}: {err.code}"
            assert concrete(name) in err.message


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_every_accepted_parameter_is_one_aws_has(action: str) -> None:
    aws = set(aws_parameters(action)) | {"Action", "Version"}
    for pattern in PARAMS[action].accepts:
        assert pattern in aws or pattern in ALIASES.get(action, set()), f"{action}: {pattern}"


async def test_every_action_refuses_unknown_and_unsupported_parameters_by_name(
    world: World,
) -> None:
    """The table over every registered action, through the endpoint: refused before anything
    is looked up or changed."""
    seen = 0
    for action in ACTION_NAMES:
        status, doc = await send(world.admin, [("Action", action), ("NoSuchThing.1", "x")])
        code, message = error_of(doc)
        assert (status, code) == (400, "UnknownParameter"), action
        assert "NoSuchThing.1" in message
        for pattern in PARAMS[action].unsupported:
            name = concrete(pattern)
            status, doc = await send(world.admin, [("Action", action), (name, "x")])
            code, message = error_of(doc)
            assert (status, code) == (400, "UnsupportedOperation"), (action, name)
            assert name in message
            seen += 1
    assert seen == sum(len(PARAMS[a].unsupported) for a in ACTION_NAMES) > 90


def test_list_members_without_index_or_with_index_0_mean_index_1() -> None:
    spec = ParamSpec(("KeyName.N", "Filter.N.Name", "Filter.N.Value.N", "DryRun"))
    assert spec.normalise("X", [("KeyName", "a")]) == [("KeyName.1", "a")]
    assert spec.normalise("X", [("KeyName.0", "a"), ("KeyName.2", "b")]) == [
        ("KeyName.1", "a"),
        ("KeyName.2", "b"),
    ]
    assert spec.normalise("X", [("Filter.Name", "n"), ("Filter.1.Value", "v")]) == [
        ("Filter.1.Name", "n"),
        ("Filter.1.Value.1", "v"),
    ]
    assert spec.normalise("X", [("Action", "X"), ("X-Amz-Date", "t")]) == [
        ("Action", "X"),
        ("X-Amz-Date", "t"),
    ]
    with pytest.raises(Ec2Error) as err:
        spec.normalise("X", [("KeyName", "a"), ("KeyName.1", "b")])
    assert err.value.code == "InvalidParameterCombination"
    with pytest.raises(Ec2Error) as err:
        spec.normalise("X", [("DryRun.1", "true")])
    assert err.value.code == "UnknownParameter"


async def test_libcloud_get_key_pair_by_unindexed_name_gets_only_that_key(world: World) -> None:
    """Libcloud's get_key_pair(name) sends KeyName=x without an index; answering with every key
    made its delete_key_pair delete another key."""
    ec2 = world.admin
    for name in ("alpha", "bravo", "charlie"):
        await ec2.call("CreateKeyPair", KeyName=name)
    status, doc = await send(ec2, [("Action", "DescribeKeyPairs"), ("KeyName", "bravo")])
    assert status == 200
    ns = {"e": "http://ec2.amazonaws.com/doc/2016-11-15/"}
    assert [k.text for k in doc.iterfind(".//e:keySet/e:item/e:keyName", ns)] == ["bravo"]
    status, doc = await send(ec2, [("Action", "DescribeKeyPairs"), ("KeyName", "nope")])
    assert (status, error_of(doc)[0]) == (400, "InvalidKeyPair.NotFound")
    status, _ = await send(ec2, [("Action", "DeleteKeyPair"), ("KeyName", "bravo")])
    assert status == 200
    left = await ec2.call("DescribeKeyPairs")
    assert sorted(k["KeyName"] for k in left["KeyPairs"]) == ["alpha", "charlie"]


async def test_unindexed_instance_id_names_one_instance(world: World) -> None:
    ec2 = world.admin
    made = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=2, MaxCount=2)
    await world.settle()
    first = made["Instances"][0]["InstanceId"]
    status, doc = await send(ec2, [("Action", "DescribeInstances"), ("InstanceId", first)])
    ns = {"e": "http://ec2.amazonaws.com/doc/2016-11-15/"}
    assert status == 200
    assert [i.text for i in doc.iterfind(".//e:instancesSet/e:item/e:instanceId", ns)] == [first]


@pytest.mark.parametrize("form", ["Groups", "SecurityGroupId"])
async def test_run_instances_honours_the_interface_security_groups(world: World, form: str) -> None:
    ec2 = world.admin
    sg = (await ec2.call("CreateSecurityGroup", GroupName="locked", Description="d"))["GroupId"]
    pairs = [
        ("Action", "RunInstances"),
        ("ImageId", world.image_id),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("NetworkInterface.1.DeviceIndex", "0"),
        (f"NetworkInterface.1.{form}.1", sg),
    ]
    status, doc = await send(ec2, pairs)
    assert status == 200, error_of(doc)
    await world.settle()
    ns = {"e": "http://ec2.amazonaws.com/doc/2016-11-15/"}
    iid = doc.findtext(".//e:instancesSet/e:item/e:instanceId", namespaces=ns)
    desc = await ec2.call("DescribeInstances", InstanceIds=[iid])
    groups = desc["Reservations"][0]["Instances"][0]["SecurityGroups"]
    assert [g["GroupId"] for g in groups] == [sg]


async def test_run_instances_refuses_what_it_cannot_do_with_an_interface(world: World) -> None:
    ec2 = world.admin
    sg = (await ec2.call("CreateSecurityGroup", GroupName="locked", Description="d"))["GroupId"]
    base = [("Action", "RunInstances"), ("ImageId", world.image_id)]
    base += [("MinCount", "1"), ("MaxCount", "1")]
    cases = {
        "InvalidParameterValue": [("NetworkInterface.1.DeviceIndex", "1")],
        "MissingParameter": [("NetworkInterface.1.Groups.1", sg)],
        "UnsupportedOperation": [
            ("NetworkInterface.1.DeviceIndex", "0"),
            ("NetworkInterface.1.SecondaryPrivateIpAddressCount", "1"),
        ],
        "InvalidSubnetID.Malformed": [
            ("NetworkInterface.1.DeviceIndex", "0"),
            ("NetworkInterface.1.SubnetId", "subnet-1"),
        ],
        "InvalidParameterCombination": [
            ("NetworkInterface.1.DeviceIndex", "0"),
            ("SecurityGroupId.1", sg),
        ],
    }
    for code, extra in cases.items():
        status, doc = await send(ec2, base + extra)
        assert (status, error_of(doc)[0]) == (400, code), extra
    assert (await ec2.call("DescribeInstances"))["Reservations"] == []


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_parameters_boto3_always_sends_are_accepted(action: str) -> None:
    """boto3 fills idempotency tokens (CreateVolume's ClientToken) on its own: refusing them
    would make the action unusable from boto3."""
    shape = _MODEL.operation_model(action).input_shape
    for member, ms in shape.members.items():
        if ms.metadata.get("idempotencyToken"):
            wire = ms.serialization.get("name") or member
            wire = wire[:1].upper() + wire[1:]
            assert PARAMS[action].canonical(action, wire) == wire


async def test_create_volume_client_token_is_idempotent(world: World) -> None:
    ec2 = world.admin
    one = await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1, ClientToken="t-1")
    again = await ec2.call("CreateVolume", AvailabilityZone="corral-1a", Size=1, ClientToken="t-1")
    assert one["VolumeId"] == again["VolumeId"]
    await ec2.fails(
        "IdempotentParameterMismatch",
        "CreateVolume",
        AvailabilityZone="corral-1a",
        Size=2,
        ClientToken="t-1",
    )
    await world.settle()
    assert len((await ec2.call("DescribeVolumes"))["Volumes"]) == 1
