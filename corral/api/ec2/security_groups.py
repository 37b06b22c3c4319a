"""Security groups: Create/Delete/DescribeSecurityGroups and Authorize/Revoke ingress and
egress (protocols, port ranges, CIDRs, group pairs). Rules are recorded and reported; the
packet filter that enforces them comes with the networking work."""

from __future__ import annotations

from typing import Any

from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok, not_found
from corral.api.ec2.errors import Ec2Error, missing
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES, TAG_SPECS
from corral.api.ec2.parse import Params
from corral.api.ec2.registry import Call, action
from corral.controller import tags
from corral.controller.security_groups import Permission
from corral.store.models import SecurityGroup, SecurityGroupRule

PERMISSIONS = (
    "IpProtocol",
    "FromPort",
    "ToPort",
    "CidrIp",
    "SourceSecurityGroupName",
    "SourceSecurityGroupOwnerId",
    "IpPermissions.N.IpProtocol",
    "IpPermissions.N.FromPort",
    "IpPermissions.N.ToPort",
    "IpPermissions.N.IpRanges.N.CidrIp",
    "IpPermissions.N.IpRanges.N.Description",
    "IpPermissions.N.Groups.N.GroupId",
    "IpPermissions.N.Groups.N.GroupName",
    "IpPermissions.N.Groups.N.Description",
    "IpPermissions.N.Groups.N.UserId",
)
PERMISSIONS_UNSUPPORTED = (
    "IpPermissions.N.Groups.N.*",  # VPC peering
    "IpPermissions.N.Ipv6Ranges.N.*",
    "IpPermissions.N.PrefixListIds.N.*",
)


def _same_account(p: Params, name: str, account: str) -> None:
    """A group pair may name its owner: it must be the caller's own account."""
    owner = p.get(name)
    if owner is not None and owner != account:
        raise Ec2Error(
            "InvalidParameterValue",
            f"{name} {owner!r}: Corral's rules refer to groups of your own account ({account})",
        )


def _permissions(p: Params, account: str) -> list[Permission]:
    out: list[Permission] = []
    for i, perm in enumerate(p.group("IpPermissions"), 1):
        proto = perm.get("IpProtocol")
        if proto is None:
            raise missing(f"IpPermissions.{i}.IpProtocol")
        fp, tp = perm.integer("FromPort"), perm.integer("ToPort")
        sources = 0
        for r in perm.group("IpRanges"):
            out.append(
                Permission(
                    proto, fp, tp, cidr=r.need("CidrIp"), description=r.get("Description", "") or ""
                )
            )
            sources += 1
        for j, g in enumerate(perm.group("Groups"), 1):
            _same_account(g, "UserId", account)
            ref = g.get("GroupId") or g.get("GroupName")
            if not ref:
                raise missing(f"IpPermissions.{i}.Groups.{j}.GroupId")
            out.append(
                Permission(proto, fp, tp, group_id=ref, description=g.get("Description", "") or "")
            )
            sources += 1
        if not sources:
            raise Ec2Error(
                "InvalidParameterValue",
                f"IpPermissions.{i} names no source: give IpRanges or Groups",
            )
    # the flat form: IpProtocol, FromPort, ToPort with CidrIp or SourceSecurityGroupName
    _same_account(p, "SourceSecurityGroupOwnerId", account)
    proto = p.get("IpProtocol")
    if proto is not None or p.get("CidrIp") or p.get("SourceSecurityGroupName"):
        fp, tp = p.integer("FromPort"), p.integer("ToPort")
        src = p.get("SourceSecurityGroupName")
        if src:
            out.append(Permission(proto or "-1", fp, tp, group_id=src))
        else:
            out.append(Permission(proto or "-1", fp, tp, cidr=p.need("CidrIp")))
    return out


def _group_ref(p: Params) -> str:
    ref = p.get("GroupId") or p.get("GroupName")
    if not ref:
        raise Ec2Error("MissingParameter", "The request must contain GroupId or GroupName")
    return ref


async def _account_vpc(call: Call) -> str | None:
    return await call.ctrl.vpcs.settled_default(call.caller.account_id)


def rule_item(r: SecurityGroupRule, owner: str) -> dict[str, Any]:
    return {
        "securityGroupRuleId": r.id,
        "groupId": r.group_id,
        "groupOwnerId": owner,
        "isEgress": r.direction == "egress",
        "ipProtocol": r.protocol,
        "fromPort": -1 if r.from_port is None else r.from_port,
        "toPort": -1 if r.to_port is None else r.to_port,
        "cidrIpv4": r.cidr,
        "referencedGroupInfo": {"groupId": r.source_group_id, "userId": owner}
        if r.source_group_id
        else None,
        "description": r.description or None,
    }


def _perm_set(
    rules: list[SecurityGroupRule], owner: str, names: dict[str, str]
) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, int | None, int | None], dict[str, Any]] = {}
    for r in rules:
        key = (r.protocol, r.from_port, r.to_port)
        item = grouped.get(key)
        if item is None:
            item = grouped[key] = {
                "ipProtocol": r.protocol,
                "fromPort": r.from_port,
                "toPort": r.to_port,
                "groups": [],
                "ipRanges": [],
                "ipv6Ranges": [],
                "prefixListIds": [],
            }
        if r.cidr:
            item["ipRanges"].append({"cidrIp": r.cidr, "description": r.description or None})
        else:
            item["groups"].append(
                {
                    "userId": owner,
                    "groupId": r.source_group_id,
                    "groupName": names.get(r.source_group_id or ""),
                    "description": r.description or None,
                }
            )
    return list(grouped.values())


@action(
    "CreateSecurityGroup",
    accepts=(
        "GroupName",
        "GroupDescription",
        "VpcId",
        *TAG_SPECS,
        *DRY_RUN,
    ),
)
async def group_create(call: Call) -> dict[str, Any]:
    p = call.p
    name = p.need("GroupName")
    description = p.need("GroupDescription")
    vpc_id = p.get("VpcId")  # the default VPC's when left out
    wanted = tags.check(p.tag_specs(("security-group",)).get("security-group", {}))
    row = await call.ctrl.security_groups.create(
        call.caller, name, description, call.dry_run, wanted, vpc_id=vpc_id
    )
    return {"return": True, "groupId": row.id, "tagSet": views.tag_set(wanted)}


@action(
    "DeleteSecurityGroup",
    accepts=(
        "GroupId",
        "GroupName",
        *DRY_RUN,
    ),
)
async def group_delete(call: Call) -> dict[str, Any]:
    ref = _group_ref(call.p)
    await call.ctrl.security_groups.delete(call.caller, ref, call.dry_run)
    return {"return": True, "groupId": ref if ref.startswith("sg-") else None}


async def _authorize(call: Call, direction: str) -> dict[str, Any]:
    added = await call.ctrl.security_groups.authorize(
        call.caller,
        _group_ref(call.p),
        direction,
        _permissions(call.p, call.caller.account_id),
        call.dry_run,
    )
    owner = call.caller.account_id
    return {"return": True, "securityGroupRuleSet": [rule_item(r, owner) for r in added]}


async def _revoke(call: Call, direction: str) -> dict[str, Any]:
    rule_ids = call.p.strings("SecurityGroupRuleId")
    if rule_ids:
        from corral.api.ec2.security_group_rules import check_rule_ids

        if _permissions(call.p, call.caller.account_id):
            raise Ec2Error(
                "InvalidParameterCombination",
                "Give SecurityGroupRuleId.N or IpPermissions, not both",
            )
        check_rule_ids(rule_ids)
        group = call.p.get("GroupId") or call.p.get("GroupName")
        if not group:
            raise missing("GroupId")
        gone = await call.ctrl.security_group_rules.revoke(
            call.caller, group, direction, rule_ids, call.dry_run
        )
        owner = call.caller.account_id
        return {"return": True, "revokedSecurityGroupRuleSet": [rule_item(r, owner) for r in gone]}
    unknown = await call.ctrl.security_groups.revoke(
        call.caller,
        _group_ref(call.p),
        direction,
        _permissions(call.p, call.caller.account_id),
        call.dry_run,
    )
    return {
        "return": True,
        "unknownIpPermissionSet": [
            {
                "ipProtocol": u.protocol,
                "fromPort": u.from_port,
                "toPort": u.to_port,
                "ipRanges": [{"cidrIp": u.cidr}] if u.cidr else [],
                "groups": [{"groupId": u.group_id}] if u.group_id else [],
            }
            for u in unknown
        ]
        or None,
    }


@action(
    "AuthorizeSecurityGroupIngress",
    accepts=(
        "GroupId",
        "GroupName",
        *PERMISSIONS,
        *DRY_RUN,
    ),
    unsupported=(
        *PERMISSIONS_UNSUPPORTED,
        "TagSpecification.N.*",
    ),
)
async def group_authorize_ingress(call: Call) -> dict[str, Any]:
    return await _authorize(call, "ingress")


@action(
    "AuthorizeSecurityGroupEgress",
    accepts=(
        "GroupId",
        *PERMISSIONS,
        *DRY_RUN,
    ),
    unsupported=(
        *PERMISSIONS_UNSUPPORTED,
        "TagSpecification.N.*",
    ),
)
async def group_authorize_egress(call: Call) -> dict[str, Any]:
    return await _authorize(call, "egress")


@action(
    "RevokeSecurityGroupIngress",
    accepts=(
        "GroupId",
        "GroupName",
        "SecurityGroupRuleId.N",
        *PERMISSIONS,
        *DRY_RUN,
    ),
    unsupported=(*PERMISSIONS_UNSUPPORTED,),
)
async def group_revoke_ingress(call: Call) -> dict[str, Any]:
    return await _revoke(call, "ingress")


@action(
    "RevokeSecurityGroupEgress",
    accepts=(
        "GroupId",
        "SecurityGroupRuleId.N",
        *PERMISSIONS,
        *DRY_RUN,
    ),
    unsupported=(*PERMISSIONS_UNSUPPORTED,),
)
async def group_revoke_egress(call: Call) -> dict[str, Any]:
    return await _revoke(call, "egress")


def _source_names(rules_of: Any, direction: str, names: dict[str, str]) -> Any:
    return lambda g: [
        names.get(r.source_group_id) for r in rules_of(g, direction) if r.source_group_id
    ]


def _source_owners(rules_of: Any, direction: str) -> Any:
    return lambda g: [g.account_id for r in rules_of(g, direction) if r.source_group_id]


@action(
    "DescribeSecurityGroups",
    accepts=(
        "GroupId.N",
        "GroupName.N",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def group_describe(call: Call) -> dict[str, Any]:
    p = call.p
    groups, rules = await call.ctrl.security_groups.list(call.caller)
    default_vpc = await _account_vpc(call)

    def vpc_of(g: SecurityGroup) -> str | None:
        return g.vpc_id or default_vpc

    all_names = {g.id: g.name for g in groups}
    ids_wanted, names_wanted = p.strings("GroupId"), p.strings("GroupName")
    if ids_wanted:
        have = {g.id for g in groups}
        gone = [g for g in ids_wanted if g not in have]
        if gone:
            raise not_found("InvalidGroup.NotFound", "security group", gone)
        groups = [g for g in groups if g.id in ids_wanted]
    if names_wanted:  # names: the default VPC's groups (other VPCs' by id), as on AWS
        have = {g.name for g in groups if not g.vpc_id}
        gone = [g for g in names_wanted if g not in have]
        if gone:
            raise not_found("InvalidGroup.NotFound", "security group", gone)
        groups = [g for g in groups if g.name in names_wanted and not g.vpc_id]
    by_group: dict[str, list[SecurityGroupRule]] = {}
    for r in rules:
        by_group.setdefault(r.group_id, []).append(r)
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, call.caller.account_id, [g.id for g in groups])

    def rules_of(g: SecurityGroup, direction: str) -> list[SecurityGroupRule]:
        return [r for r in by_group.get(g.id, []) if r.direction == direction]

    def field(direction: str, attr: str) -> Any:
        return lambda g: [getattr(r, attr) for r in rules_of(g, direction)]

    known: dict[str, Any] = {
        "group-id": lambda g: g.id,
        "group-name": lambda g: g.name,
        "description": lambda g: g.description,
        "owner-id": lambda g: g.account_id,
        "vpc-id": vpc_of,
    }
    for prefix, direction in (("ip-permission", "ingress"), ("egress.ip-permission", "egress")):
        known |= {
            f"{prefix}.protocol": field(direction, "protocol"),
            f"{prefix}.from-port": field(direction, "from_port"),
            f"{prefix}.to-port": field(direction, "to_port"),
            f"{prefix}.cidr": field(direction, "cidr"),
            f"{prefix}.group-id": field(direction, "source_group_id"),
            f"{prefix}.group-name": _source_names(rules_of, direction, all_names),
            f"{prefix}.user-id": _source_owners(rules_of, direction),
        }
    match = Filters(
        p.filters(),
        known,
        lambda g: tag_map.get(g.id, {}),
        (
            "ip-permission.ipv6-cidr",
            "ip-permission.prefix-list-id",
            "egress.ip-permission.ipv6-cidr",
            "egress.ip-permission.prefix-list-id",
        ),
    )
    groups = [g for g in groups if match(g)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(groups, p, call.action, call.caller.account_id, 5, 1000, "GroupId")
    names = {g.id: g.name for g in groups}
    owner = call.caller.account_id
    return {
        "securityGroupInfo": [
            {
                "ownerId": g.account_id,
                "groupId": g.id,
                "groupName": g.name,
                "groupDescription": g.description,
                "vpcId": vpc_of(g),
                "ipPermissions": _perm_set(rules_of(g, "ingress"), owner, names),
                "ipPermissionsEgress": _perm_set(rules_of(g, "egress"), owner, names),
                "tagSet": views.tag_set(tag_map.get(g.id)),
            }
            for g in page
        ],
        "nextToken": token,
    }
