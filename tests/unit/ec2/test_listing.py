"""Filters (tag:<key>, tag-key, wildcards, state) and pagination with AWS's rules."""

from __future__ import annotations

from tests.unit.ec2.conftest import Ec2, World


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
    # botocore's paginator does the same
    assert len(made) == 12


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
