"""Security-group rules as resources: sgr- ids in DescribeSecurityGroupRules, revoking by
SecurityGroupRuleId.N, ModifySecurityGroupRules keeping the id, descriptions by id or by
permission, and revokes that match a rule the way AWS does (ICMP -1 forms, protocol numbers)."""

from __future__ import annotations

from typing import Any

from tests.unit.ec2.conftest import World

SSH = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
PING = {"IpProtocol": "icmp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}


async def _rules(world: World, sg: str) -> list[dict[str, Any]]:
    out = await world.admin.call(
        "DescribeSecurityGroupRules", Filters=[{"Name": "group-id", "Values": [sg]}]
    )
    return list(out["SecurityGroupRules"])


async def test_rules_have_ids_and_are_revoked_by_id(world: World) -> None:
    ec2 = world.admin
    sg = (await ec2.call("CreateSecurityGroup", GroupName="r", Description="r"))["GroupId"]
    made = await ec2.call("AuthorizeSecurityGroupIngress", GroupId=sg, IpPermissions=[SSH, PING])
    ids = [r["SecurityGroupRuleId"] for r in made["SecurityGroupRules"]]
    assert all(i.startswith("sgr-") for i in ids) and len(ids) == 2
    rules = await _rules(world, sg)
    ingress = {r["SecurityGroupRuleId"]: r for r in rules if not r["IsEgress"]}
    egress = [r for r in rules if r["IsEgress"]]
    assert set(ingress) == set(ids) and len(egress) == 1  # a new group lets everything out
    one = await ec2.call("DescribeSecurityGroupRules", SecurityGroupRuleIds=[ids[0]])
    assert one["SecurityGroupRules"][0]["FromPort"] == 22
    # an egress rule is not an ingress rule
    await ec2.fails(
        "InvalidSecurityGroupRuleId.NotFound",
        "RevokeSecurityGroupIngress",
        GroupId=sg,
        SecurityGroupRuleIds=[egress[0]["SecurityGroupRuleId"]],
    )
    gone = await ec2.call("RevokeSecurityGroupIngress", GroupId=sg, SecurityGroupRuleIds=[ids[0]])
    assert gone["Return"] is True
    assert [r["SecurityGroupRuleId"] for r in gone["RevokedSecurityGroupRules"]] == [ids[0]]
    assert [r["SecurityGroupRuleId"] for r in await _rules(world, sg) if not r["IsEgress"]] == [
        ids[1]
    ]
    await ec2.fails(
        "InvalidSecurityGroupRuleId.Malformed",
        "DescribeSecurityGroupRules",
        SecurityGroupRuleIds=["rule-1"],
    )
    # the ICMP rule, given as type -1 / code -1 and by protocol number, is the same rule
    same = {"IpProtocol": "1", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    await ec2.call("RevokeSecurityGroupIngress", GroupId=sg, IpPermissions=[same])
    assert [r for r in await _rules(world, sg) if not r["IsEgress"]] == []
    # CIDRs are normalised as AWS does: 10.1.2.3/16 is the rule 10.1.0.0/16
    loose = {
        "IpProtocol": "tcp",
        "FromPort": 80,
        "ToPort": 80,
        "IpRanges": [{"CidrIp": "10.1.2.3/16"}],
    }
    made = await ec2.call("AuthorizeSecurityGroupIngress", GroupId=sg, IpPermissions=[loose])
    assert made["SecurityGroupRules"][0]["CidrIpv4"] == "10.1.0.0/16"
    exact = dict(loose, IpRanges=[{"CidrIp": "10.1.0.0/16"}])
    await ec2.fails(
        "InvalidPermission.Duplicate",
        "AuthorizeSecurityGroupIngress",
        GroupId=sg,
        IpPermissions=[exact],
    )
    await ec2.call("RevokeSecurityGroupIngress", GroupId=sg, IpPermissions=[loose])
    assert [r for r in await _rules(world, sg) if not r["IsEgress"]] == []


async def test_modify_rules_and_descriptions(world: World) -> None:
    ec2 = world.admin
    sg = (await ec2.call("CreateSecurityGroup", GroupName="m", Description="m"))["GroupId"]
    made = await ec2.call("AuthorizeSecurityGroupIngress", GroupId=sg, IpPermissions=[SSH, PING])
    ssh_id, ping_id = (r["SecurityGroupRuleId"] for r in made["SecurityGroupRules"])
    await ec2.call(
        "ModifySecurityGroupRules",
        GroupId=sg,
        SecurityGroupRules=[
            {
                "SecurityGroupRuleId": ssh_id,
                "SecurityGroupRule": {
                    "IpProtocol": "tcp",
                    "FromPort": 2222,
                    "ToPort": 2222,
                    "CidrIpv4": "192.0.2.0/24",
                    "Description": "moved",
                },
            }
        ],
    )
    rule = (await ec2.call("DescribeSecurityGroupRules", SecurityGroupRuleIds=[ssh_id]))[
        "SecurityGroupRules"
    ][0]
    assert (rule["FromPort"], rule["CidrIpv4"], rule["Description"]) == (
        2222,
        "192.0.2.0/24",
        "moved",
    )
    # the group's own view follows
    group = (await ec2.call("DescribeSecurityGroups", GroupIds=[sg]))["SecurityGroups"][0]
    assert {p.get("FromPort") for p in group["IpPermissions"]} == {2222, -1}
    await ec2.call(
        "UpdateSecurityGroupRuleDescriptionsIngress",
        GroupId=sg,
        SecurityGroupRuleDescriptions=[{"SecurityGroupRuleId": ping_id, "Description": "pings"}],
    )
    by_perm = dict(PING, IpRanges=[{"CidrIp": "10.0.0.0/8", "Description": "pings again"}])
    await ec2.call(
        "UpdateSecurityGroupRuleDescriptionsIngress", GroupId=sg, IpPermissions=[by_perm]
    )
    rule = (await ec2.call("DescribeSecurityGroupRules", SecurityGroupRuleIds=[ping_id]))[
        "SecurityGroupRules"
    ][0]
    assert rule["Description"] == "pings again"
    await ec2.fails(
        "InvalidPermission.NotFound",
        "UpdateSecurityGroupRuleDescriptionsIngress",
        GroupId=sg,
        IpPermissions=[SSH],
    )
    # a change that would duplicate another rule is refused
    await ec2.fails(
        "InvalidPermission.Duplicate",
        "ModifySecurityGroupRules",
        GroupId=sg,
        SecurityGroupRules=[
            {
                "SecurityGroupRuleId": ssh_id,
                "SecurityGroupRule": {
                    "IpProtocol": "icmp",
                    "FromPort": -1,
                    "ToPort": -1,
                    "CidrIpv4": "10.0.0.0/8",
                },
            }
        ],
    )
