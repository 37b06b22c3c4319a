"""Security groups: create, list, show, remove, and their rules: allow, revoke (by id or by the
permission). The same controller paths as EC2's calls; errors name the REST field."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from corral import netmodels as m
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES, rest_fields
from corral.controller.accounts import Caller
from corral.controller.security_groups import Permission
from corral.errors import NotFound
from corral.store import models as db

router = APIRouter(prefix="/v1/security-groups", tags=["security-groups"], responses=RESPONSES)

# the controller speaks EC2's parameter names; the REST body names them so
FIELDS = {
    "GroupName": "name",
    "GroupDescription": "description",
    "GroupId": "group",
    "IpProtocol": "protocol",
    "FromPort": "from_port",
    "ToPort": "to_port",
    "CidrIp": "cidr",
    "SourceSecurityGroup": "source_group",
    "IpPermissions": "cidr",
    "Tag.Key": "tags",
    "Tag.Value": "tags",
    "Tag": "tags",
    "VpcId": "vpc",
}


@router.get("", response_model=list[m.SecurityGroup])
async def security_group_list(
    ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> list[m.SecurityGroup]:
    return await _views(ctx, who)


@router.post("", status_code=201, response_model=m.SecurityGroup)
async def security_group_create(
    req: m.SecurityGroupCreate, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> m.SecurityGroup:
    with rest_fields(FIELDS):
        row = await ctx.controller.security_groups.create(
            who, req.name, req.description or req.name, tags=req.tags, vpc_id=req.vpc
        )
    return await _one(ctx, who, row.id)


@router.get("/{ref}", response_model=m.SecurityGroup)
async def security_group_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> m.SecurityGroup:
    """One group by id (sg-…) or name, with its rules."""
    return await _one(ctx, who, ref)


@router.delete("/{ref}", status_code=204)
async def security_group_remove(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Refused (409) while instances use it or other groups' rules name it."""
    with rest_fields(FIELDS):
        await ctx.controller.security_groups.delete(who, ref)
    return Response(status_code=204)


@router.post("/{ref}/rules", status_code=201, response_model=m.SecurityGroupRule)
async def security_group_allow(
    ref: str, req: m.RuleSpec, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> m.SecurityGroupRule:
    """Add a rule; it is in force on the nodes' packet filters when this answers."""
    with rest_fields(FIELDS):
        added = await ctx.controller.security_groups.authorize(
            who, ref, req.direction, [permission(req)]
        )
    return rule(added[0])


@router.post("/{ref}/rules/revoke", status_code=204)
async def security_group_revoke(
    ref: str, req: m.RuleSpec, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Remove the rule that matches this permission (404 when none does)."""
    with rest_fields(FIELDS):
        await ctx.controller.security_groups.revoke(who, ref, req.direction, [permission(req)])
    return Response(status_code=204)


@router.delete("/{ref}/rules/{rule_id}", status_code=204)
async def security_group_rule_remove(
    ref: str, rule_id: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> Response:
    """Remove one rule by its id (sgr-…)."""
    group = await _one(ctx, who, ref)
    found = next((r for r in group.rules if r.id == rule_id), None)
    if found is None:
        raise NotFound(
            f"the rule {rule_id} does not exist in {group.id}; `corral sg show {group.name}` "
            "lists its rules",
            field="rule_id",
            resource="security_group_rule",
        )
    with rest_fields(FIELDS):
        await ctx.controller.security_group_rules.revoke(who, group.id, found.direction, [rule_id])
    return Response(status_code=204)


def permission(req: m.RuleSpec) -> Permission:
    # one port for tcp/udp unless a range is given; ICMP's to_port is the code (absent: all)
    ports = req.protocol.lower() in ("tcp", "udp", "6", "17")
    to_port = req.to_port if req.to_port is not None or not ports else req.from_port
    return Permission(
        req.protocol, req.from_port, to_port, req.cidr, req.source_group, req.description
    )


def rule(r: db.SecurityGroupRule) -> m.SecurityGroupRule:
    return m.SecurityGroupRule(
        id=r.id,
        direction=r.direction,  # type: ignore[arg-type]
        protocol=r.protocol,
        from_port=r.from_port,
        to_port=r.to_port,
        cidr=r.cidr,
        source_group=r.source_group_id,
        description=r.description,
    )


async def _views(ctx: ApiContext, who: Caller) -> list[m.SecurityGroup]:
    groups, rules = await ctx.controller.security_groups.list(who)
    async with ctx.controller.store.read() as s:
        tag_map = await ctx.controller.tags.of(s, who.account_id, [g.id for g in groups])
    return [
        m.SecurityGroup(
            id=g.id,
            name=g.name,
            description=g.description,
            created_at=g.created_at,
            rules=[rule(r) for r in rules if r.group_id == g.id],
            tags=tag_map.get(g.id, {}),
            vpc=g.vpc_id or None,
        )
        for g in groups
    ]


async def _one(ctx: ApiContext, who: Caller, ref: str) -> m.SecurityGroup:
    for g in await _views(ctx, who):
        if ref in (g.id, g.name):
            return g
    raise NotFound(
        f"the security group '{ref}' does not exist; `corral sg ls` lists yours",
        field="group",
        resource="security_group",
    )
