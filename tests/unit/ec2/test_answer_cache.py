"""Describe* answers are kept until the next write: the same answer again (with its own
request id), and a fresh one as soon as anything changed."""

from __future__ import annotations

import re

from tests.unit.ec2.conftest import World


def _request_id(body: bytes) -> str:
    m = re.search(rb"<requestId>([^<]+)</requestId>", body)
    assert m
    return m.group(1).decode()


async def test_a_repeated_describe_is_the_same_answer_with_a_new_request_id(world: World) -> None:
    ec2 = world.admin
    out = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    iid = out["Instances"][0]["InstanceId"]
    await world.settle()
    first = await ec2.raw("DescribeInstances")
    second = await ec2.raw("DescribeInstances")
    assert _request_id(first.content) != _request_id(second.content)
    strip = re.compile(rb"<requestId>[^<]+</requestId>")
    assert strip.sub(b"", first.content) == strip.sub(b"", second.content)
    # a write (a tag) moves the store on: the next answer shows it
    await ec2.call("CreateTags", Resources=[iid], Tags=[{"Key": "role", "Value": "web"}])
    third = await ec2.call("DescribeInstances")
    tags = third["Reservations"][0]["Instances"][0]["Tags"]
    assert {"Key": "role", "Value": "web"} in tags


async def test_answers_are_not_shared_between_accounts_or_questions(world: World) -> None:
    ec2 = world.admin
    other = await world.account("other")
    await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    await world.settle()
    assert len((await ec2.call("DescribeInstances"))["Reservations"]) == 1
    assert (await other.call("DescribeInstances"))["Reservations"] == []
    filtered = await ec2.call(
        "DescribeInstances", Filters=[{"Name": "instance-state-name", "Values": ["stopped"]}]
    )
    assert filtered["Reservations"] == []
    # DryRun is never answered from the cache
    err = await ec2.fails("DryRunOperation", "DescribeInstances", DryRun=True)
    assert err.status == 412
