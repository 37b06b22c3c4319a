"""Filters (tag:<key>, tag-key, wildcards, state) and pagination with AWS's rules."""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.session
from botocore.paginate import Paginator

from tests.unit.ec2.conftest import _MODEL, Ec2, World


async def _run(world: World, ec2: Ec2, n: int, tags: dict[str, str] | None = None) -> list[str]:
    spec = (
        [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        if tags
        else []
    )
    out = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=n,
        MaxCount=n,
        InstanceType="cr1.nano",
        TagSpecifications=spec,
    )
    await world.settle()
    return [i["InstanceId"] for i in out["Instances"]]


def _ids(out: dict) -> list[str]:  # type: ignore[type-arg]
    return [i["InstanceId"] for r in out["Reservations"] for i in r["Instances"]]


async def test_tag_filters_and_wildcards(world: World) -> None:
    ec2 = world.admin
    web = await _run(world, ec2, 2, {"role": "web", "env": "prod"})
    db = await _run(world, ec2, 1, {"role": "db"})
    plain = await _run(world, ec2, 1)
    f = [{"Name": "tag:role", "Values": ["web"]}]
    assert sorted(_ids(await ec2.call("DescribeInstances", Filters=f))) == sorted(web)
    f = [{"Name": "tag:role", "Values": ["w*", "d?"]}]
    assert sorted(_ids(await ec2.call("DescribeInstances", Filters=f))) == sorted(web + db)
    f = [{"Name": "tag-key", "Values": ["env"]}]
    assert sorted(_ids(await ec2.call("DescribeInstances", Filters=f))) == sorted(web)
    f = [{"Name": "tag-value", "Values": ["db"]}]
    assert _ids(await ec2.call("DescribeInstances", Filters=f)) == db
    # filters AND together, values OR
    f = [{"Name": "tag:role", "Values": ["web", "db"]}, {"Name": "tag:env", "Values": ["prod"]}]
    assert sorted(_ids(await ec2.call("DescribeInstances", Filters=f))) == sorted(web)
    await ec2.call("StopInstances", InstanceIds=plain)
    await world.settle()
    f = [{"Name": "instance-state-name", "Values": ["stopped"]}]
    assert _ids(await ec2.call("DescribeInstances", Filters=f)) == plain
    f = [
        {"Name": "instance-type", "Values": ["cr1.nano"]},
        {"Name": "instance-state-code", "Values": ["16"]},
    ]
    assert len(_ids(await ec2.call("DescribeInstances", Filters=f))) == 3


async def test_unknown_filter_is_refused(world: World) -> None:
    err = await world.admin.fails(
        "InvalidParameterValue",
        "DescribeInstances",
        Filters=[{"Name": "colour", "Values": ["red"]}],
    )
    assert "colour" in err.message


async def test_pagination_walks_every_instance_once(world: World) -> None:
    ec2 = world.admin
    made = await _run(world, ec2, 12)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        kw = {"MaxResults": 5} | ({"NextToken": token} if token else {})
        out = await ec2.call("DescribeInstances", **kw)
        seen += _ids(out)
        pages += 1
        token = out.get("NextToken")
        if not token:
            break
    assert pages == 3 and sorted(seen) == sorted(made) and len(seen) == 12
    # botocore's own paginator (the one boto3's get_paginator uses) walks it the same way
    assert sorted(await _botocore_pages(ec2, PageSize=5)) == sorted(made)


async def _botocore_pages(ec2: Ec2, **config: int) -> list[str]:
    """Every instance id, as botocore's Paginator collects them from Corral's pages. The
    paginator is synchronous: it runs in a thread and each page it asks for is one request to
    the app on this loop."""
    loop = asyncio.get_running_loop()
    calls: list[dict[str, Any]] = []

    def describe(**kw: Any) -> dict[str, Any]:
        calls.append(kw)
        return asyncio.run_coroutine_threadsafe(ec2.call("DescribeInstances", **kw), loop).result(
            30
        )

    model = botocore.session.get_session().get_paginator_model("ec2")
    paginator = Paginator(
        describe,
        model.get_paginator("DescribeInstances"),
        _MODEL.operation_model("DescribeInstances"),
    )

    def walk() -> list[str]:
        pages = paginator.paginate(PaginationConfig=config)
        return [
            i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]
        ]

    ids = await asyncio.to_thread(walk)
    # it asked page by page, passing Corral's NextToken back
    assert len(calls) > 1 and all(c["MaxResults"] == config["PageSize"] for c in calls), calls
    assert "NextToken" not in calls[0] and all("NextToken" in c for c in calls[1:]), calls
    return ids


async def test_pagination_rules(world: World) -> None:
    ec2 = world.admin
    made = await _run(world, ec2, 6)
    await ec2.fails("InvalidParameterValue", "DescribeInstances", MaxResults=4)
    await ec2.fails("InvalidParameterValue", "DescribeInstances", MaxResults=1001)
    await ec2.fails(
        "InvalidParameterCombination", "DescribeInstances", MaxResults=5, InstanceIds=made[:1]
    )
    await ec2.fails(
        "InvalidPaginationToken", "DescribeInstances", MaxResults=5, NextToken="bm90LWEtdG9rZW4"
    )
    out = await ec2.call("DescribeInstances", MaxResults=5)
    f = [{"Name": "instance-type", "Values": ["cr1.nano"]}]
    await ec2.fails(
        "InvalidPaginationToken",
        "DescribeInstances",
        MaxResults=5,
        NextToken=out["NextToken"],
        Filters=f,
    )


async def test_instance_ids_not_found_lists_them(world: World) -> None:
    ec2 = world.admin
    made = await _run(world, ec2, 1)
    err = await ec2.fails(
        "InvalidInstanceID.NotFound",
        "DescribeInstances",
        InstanceIds=[made[0], "i-0000000000000000a"],
    )
    assert "i-0000000000000000a" in err.message and made[0] not in err.message


async def test_describe_tags_filters_and_pages(world: World) -> None:
    ec2 = world.admin
    made = await _run(world, ec2, 3, {"a": "1", "b": "2"})
    out = await ec2.call("DescribeTags", Filters=[{"Name": "key", "Values": ["a"]}])
    assert sorted(t["ResourceId"] for t in out["Tags"]) == sorted(made)
    assert {t["ResourceType"] for t in out["Tags"]} == {"instance"}
    page = await ec2.call("DescribeTags", MaxResults=5)
    assert len(page["Tags"]) == 5 and page["NextToken"]
    rest = await ec2.call("DescribeTags", MaxResults=5, NextToken=page["NextToken"])
    assert len(rest["Tags"]) == 1 and "NextToken" not in rest
