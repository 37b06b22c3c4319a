"""Security-group rules as resources: DescribeSecurityGroupRules, ModifySecurityGroupRules,
UpdateSecurityGroupRuleDescriptionsIngress/Egress (RevokeSecurityGroupIngress/Egress by
``SecurityGroupRuleId.N`` live with the other revokes in ``security_groups``)."""

from __future__ import annotations

from typing import Any

from corral.api.ec2.common import dry_run_ok
from corral.api.ec2.errors import Ec2Error, missing
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES
from corral.api.ec2.registry import Call, action
from corral.api.ec2.security_groups import (
    PERMISSIONS,
    PERMISSIONS_UNSUPPORTED,
    _group_ref,
    _permissions,
    rule_item,
)
from corral.controller.security_groups import Permission


def check_rule_ids(values: list[str], param: str = "SecurityGroupRuleId") -> None:
    from corral import ids

    for v in values:
        if not ids.is_id("security_group_rule", v):
            raise Ec2Error(
                "InvalidSecurityGroupRuleId.Malformed",
                f'Invalid id: "{v}" ({param} must be sgr- and 8 or 17 hex digits)',
            )


@action(
    "DescribeSecurityGroupRules",
    accepts=("SecurityGroupRuleId.N", *FILTERS, *PAGES, *DRY_RUN),
)
async def rules_describe(call: Call) -> dict[str, Any]:
    p = call.p
    wanted = p.strings("SecurityGroupRuleId")
    check_rule_ids(wanted)
    rows = await call.ctrl.security_group_rules.describe_all(call.caller)
    if wanted:
        have = {r.id for r in rows}
        gone = [w for w in wanted if w not in have]
        if gone:
            raise Ec2Error(
                "InvalidSecurityGroupRuleId.NotFound",
                f"The security group rule '{', '.join(gone)}' does not exist",
            )
        rows = [r for r in rows if r.id in wanted]
    match = Filters(
        p.filters(),
        {"group-id": lambda r: r.group_id, "security-group-rule-id": lambda r: r.id},
        lambda r: {},  # rules carry no tags here: tag filters match none
    )
    rows = [r for r in rows if match(r)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(
        rows, p, call.action, call.caller.account_id, 5, 1000, "SecurityGroupRuleId"
    )
    owner = call.caller.account_id
    return {"securityGroupRuleSet": [rule_item(r, owner) for r in page], "nextToken": token}


_RULE = "SecurityGroupRule.N.SecurityGroupRule"


@action(
    "ModifySecurityGroupRules",
    accepts=(
        "GroupId",
        "SecurityGroupRule.N.SecurityGroupRuleId",
        f"{_RULE}.IpProtocol",
        f"{_RULE}.FromPort",
        f"{_RULE}.ToPort",
        f"{_RULE}.CidrIpv4",
        f"{_RULE}.ReferencedGroupId",
        f"{_RULE}.Description",
        *DRY_RUN,
    ),
    unsupported=(f"{_RULE}.CidrIpv6", f"{_RULE}.PrefixListId"),
)
async def rules_modify(call: Call) -> dict[str, Any]:
    p = call.p
    group = p.need("GroupId")
    changes: dict[str, Permission] = {}
    for i, item in enumerate(p.group("SecurityGroupRule"), 1):
        rid = item.get("SecurityGroupRuleId")
        if not rid:
            raise missing(f"SecurityGroupRule.{i}.SecurityGroupRuleId")
        check_rule_ids([rid], f"SecurityGroupRule.{i}.SecurityGroupRuleId")
        proto = item.get("SecurityGroupRule.IpProtocol")
        if proto is None:
            raise missing(f"SecurityGroupRule.{i}.SecurityGroupRule.IpProtocol")
        changes[rid] = Permission(
            proto,
            item.integer("SecurityGroupRule.FromPort"),
            item.integer("SecurityGroupRule.ToPort"),
            cidr=item.get("SecurityGroupRule.CidrIpv4"),
            group_id=item.get("SecurityGroupRule.ReferencedGroupId"),
            description=item.get("SecurityGroupRule.Description", "") or "",
        )
    if not changes:
        raise missing("SecurityGroupRule.1.SecurityGroupRuleId")
    await call.ctrl.security_group_rules.modify(call.caller, group, changes, call.dry_run)
    return {"return": True}


async def _descriptions(call: Call, direction: str) -> dict[str, Any]:
    p = call.p
    by_id: dict[str, str] = {}
    for i, item in enumerate(p.group("SecurityGroupRuleDescription"), 1):
        rid = item.get("SecurityGroupRuleId")
        if not rid:
            raise missing(f"SecurityGroupRuleDescription.{i}.SecurityGroupRuleId")
        check_rule_ids([rid])
        by_id[rid] = item.get("Description", "") or ""
    perms = _permissions(p, call.caller.account_id) if p.group("IpPermissions") else []
    if not by_id and not perms:
        raise missing("IpPermissions or SecurityGroupRuleDescription")
    await call.ctrl.security_group_rules.set_descriptions(
        call.caller, _group_ref(p), direction, by_id, perms, call.dry_run
    )
    return {"return": True}


_DESCRIPTION_PARAMS = (
    "GroupId",
    "GroupName",
    *(n for n in PERMISSIONS if n.startswith("IpPermissions.")),
    "SecurityGroupRuleDescription.N.SecurityGroupRuleId",
    "SecurityGroupRuleDescription.N.Description",
    *DRY_RUN,
)


@action(
    "UpdateSecurityGroupRuleDescriptionsIngress",
    accepts=_DESCRIPTION_PARAMS,
    unsupported=PERMISSIONS_UNSUPPORTED,
)
async def rules_describe_ingress(call: Call) -> dict[str, Any]:
    return await _descriptions(call, "ingress")


@action(
    "UpdateSecurityGroupRuleDescriptionsEgress",
    accepts=_DESCRIPTION_PARAMS,
    unsupported=PERMISSIONS_UNSUPPORTED,
)
async def rules_describe_egress(call: Call) -> dict[str, Any]:
    return await _descriptions(call, "egress")
