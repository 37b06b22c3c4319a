"""The wire format: namespace, requestId, lists as …Set/item, error documents with non-2xx
statuses, unknown and unimplemented actions answered with 4xx."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.unit.ec2.conftest import World

NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


async def _post(world: World, body: bytes) -> tuple[int, ET.Element]:
    resp = await world.admin.send(world.admin.sign("POST", body, headers=FORM))
    return resp.status_code, ET.fromstring(resp.content)


async def test_success_has_namespace_request_id_and_item_lists(world: World) -> None:
    status, root = await _post(world, b"Action=DescribeAvailabilityZones&Version=2016-11-15")
    assert status == 200
    assert root.tag == f"{NS}DescribeAvailabilityZonesResponse"
    assert root.find(f"{NS}requestId") is not None
    items = root.findall(f"{NS}availabilityZoneInfo/{NS}item")
    assert [i.findtext(f"{NS}zoneName") for i in items] == ["corral-1a"]


async def test_error_document_shape(world: World) -> None:
    status, root = await _post(
        world, b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0123456789abcdef0"
    )
    assert status == 400
    assert root.tag == "Response"
    err = root.find("Errors/Error")
    assert err is not None and err.findtext("Code") == "InvalidInstanceID.NotFound"
    assert "i-0123456789abcdef0" in (err.findtext("Message") or "")
    assert root.findtext("RequestID")


async def test_malformed_instance_id(world: World) -> None:
    err = await world.admin.fails(
        "InvalidInstanceID.Malformed", "DescribeInstances", InstanceIds=["web-1"]
    )
    assert err.status == 400


async def test_unknown_action_is_invalid_action(world: World) -> None:
    status, root = await _post(world, b"Action=LaunchRockets&Version=2016-11-15")
    assert status == 400 and root.findtext("Errors/Error/Code") == "InvalidAction"


async def test_unimplemented_aws_action_is_4xx(world: World) -> None:
    status, root = await _post(world, b"Action=CreateNetworkInterface&Version=2016-11-15")
    assert status == 400 and root.findtext("Errors/Error/Code") == "UnsupportedOperation"


async def test_missing_action(world: World) -> None:
    status, root = await _post(world, b"Version=2016-11-15")
    assert status == 400 and root.findtext("Errors/Error/Code") == "MissingAction"


async def test_missing_parameter_names_it(world: World) -> None:
    err = await world.admin.fails(
        "MissingParameter", "CreateSecurityGroup", GroupName="x", Description=""
    )
    assert "GroupDescription" in err.message


async def test_bad_boolean_names_the_parameter(world: World) -> None:
    status, root = await _post(world, b"Action=DescribeInstances&Version=2016-11-15&DryRun=maybe")
    assert status == 400 and "DryRun" in (root.findtext("Errors/Error/Message") or "")


async def test_catalog(world: World) -> None:
    ec2 = world.admin
    types = await ec2.call("DescribeInstanceTypes", InstanceTypes=["cr1.nano"])
    t = types["InstanceTypes"][0]
    assert t["VCpuInfo"]["DefaultVCpus"] == 1 and t["MemoryInfo"]["SizeInMiB"] == 128
    assert t["BurstablePerformanceSupported"] is True
    resp = await ec2.raw("DescribeInstanceTypes", InstanceTypes=["cr1.nano"])
    assert b"<cpuLimitInCores>0.2</cpuLimitInCores>" in resp.content
    await ec2.fails("InvalidInstanceType", "DescribeInstanceTypes", InstanceTypes=["x9.huge"])
    attrs = await ec2.call("DescribeAccountAttributes", AttributeNames=["supported-platforms"])
    values = attrs["AccountAttributes"][0]["AttributeValues"]
    assert values == [{"AttributeValue": "VPC"}]
    zones = await ec2.call("DescribeAvailabilityZones")
    assert zones["AvailabilityZones"][0]["State"] == "available"


async def test_zones_are_the_nodes_zones_with_their_state(world: World) -> None:
    from corral.store.models import Node, utcnow

    async with world.ctrl.store.write() as s:
        # renewed just now: a node with no renewal is found lapsed by the next cluster pass
        b1 = Node(id="node-b1", name="b1", zone="zone-b", state="up", address="https://x")
        b1.last_seen = utcnow()
        s.add(b1)
        s.add(Node(id="node-c1", name="c1", zone="zone-c", state="unreachable", address="h"))
        s.add(Node(id="node-c2", name="c2", zone="zone-c", state="removed", address=""))
    status, root = await _post(world, b"Action=DescribeAvailabilityZones&Version=2016-11-15")
    assert status == 200
    items = root.findall(f"{NS}availabilityZoneInfo/{NS}item")
    got = {i.findtext(f"{NS}zoneName"): i.findtext(f"{NS}zoneState") for i in items}
    assert got == {"corral-1a": "available", "zone-b": "available", "zone-c": "unavailable"}
    status, root = await _post(
        world, b"Action=DescribeAvailabilityZones&Version=2016-11-15&ZoneName.1=zone-x"
    )
    assert status == 400 and b"zone-b" in ET.tostring(root)
