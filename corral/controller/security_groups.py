"""Security groups and their rules. Every account has a ``default`` group (ingress from its own
members, all egress). Rules are records here; the node's packet filter that enforces them
belongs to the networking work and reads these records."""

from __future__ import annotations

import builtins
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import quotas
from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Exists, Invalid, NotFound, WrongState
from corral.store.models import (
    Instance,
    InstanceSecurityGroup,
    SecurityGroup,
    SecurityGroupRule,
)

if TYPE_CHECKING:
    from corral.controller.service import Controller

PROTOCOLS = {
    "tcp": "tcp",
    "udp": "udp",
    "icmp": "icmp",
    "-1": "-1",
    "all": "-1",
    "6": "tcp",
    "17": "udp",
    "1": "icmp",
}


@dataclass(frozen=True)
class Permission:
    """One rule as asked for: protocol, ports, and one source (a CIDR or a group)."""

    protocol: str
    from_port: int | None = None
    to_port: int | None = None
    cidr: str | None = None
    group_id: str | None = None
    description: str = ""


def normalize(p: Permission) -> Permission:
    proto = PROTOCOLS.get(p.protocol.lower())
    if proto is None:
        try:
            number = int(p.protocol)
        except ValueError:
            number = -2
        if not 0 <= number <= 255:
            raise Invalid(
                f"IpProtocol {p.protocol!r} must be tcp, udp, icmp, -1 (all) or a "
                "protocol number 0-255",
                field="IpProtocol",
            )
        proto = str(number)
    fp, tp = p.from_port, p.to_port
    if proto in ("tcp", "udp"):
        if fp is None or tp is None:
            raise Invalid(
                f"{proto} rules need FromPort and ToPort (0-65535)",
                field="FromPort",
                ec2_code="InvalidParameterValue",
            )
        if not (0 <= fp <= 65535 and 0 <= tp <= 65535) or fp > tp:
            raise Invalid(
                f"ports {fp}-{tp} must be 0-65535 with FromPort <= ToPort", field="FromPort"
            )
    elif proto == "icmp":
        fp = -1 if fp is None else fp
        tp = -1 if tp is None else tp
        if not (-1 <= fp <= 255 and -1 <= tp <= 255):
            raise Invalid(
                f"ICMP type {fp} and code {tp} must be -1 (all) or 0-255", field="FromPort"
            )
    else:
        fp = tp = None  # all traffic or another protocol: ports do not apply
    cidr = p.cidr
    if cidr is not None:
        try:
            # as AWS does: host bits are dropped (10.0.0.5/8 is the rule 10.0.0.0/8)
            cidr = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError as err:
            raise Invalid(
                f"CidrIp {p.cidr!r} is not a valid CIDR block (e.g. 203.0.113.0/24)", field="CidrIp"
            ) from err
    if (cidr is None) == (p.group_id is None):
        raise Invalid(
            "each permission needs exactly one source: a CIDR (IpRanges) or a group (Groups)",
            field="IpPermissions",
            ec2_code="InvalidParameterCombination",
        )
    return Permission(proto, fp, tp, cidr, p.group_id, p.description)


def _key(r: SecurityGroupRule | Permission) -> tuple[object, ...]:
    if isinstance(r, SecurityGroupRule):
        return (r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id)
    return (r.protocol, r.from_port, r.to_port, r.cidr, r.group_id)


class SecurityGroups:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def ensure_default(
        self, s: AsyncSession, account_id: str, vpc: str = ""
    ) -> SecurityGroup:
        """The ``default`` group of the account's VPC ``vpc`` ("" its default VPC), made on
        first use: its members reach each other, and anything goes out."""
        row = await s.scalar(
            select(SecurityGroup).where(
                SecurityGroup.account_id == account_id,
                SecurityGroup.vpc_id == vpc,
                SecurityGroup.name == "default",
            )
        )
        if row is None:
            row = SecurityGroup(
                id=ids.new_id("security_group"),
                account_id=account_id,
                name="default",
                description="default group" if not vpc else f"default group of {vpc}",
                vpc_id=vpc,
            )
            s.add(row)
            s.add(
                SecurityGroupRule(
                    id=ids.new_id("security_group_rule"),
                    group_id=row.id,
                    direction="ingress",
                    protocol="-1",
                    source_group_id=row.id,
                )
            )
            s.add(
                SecurityGroupRule(
                    id=ids.new_id("security_group_rule"),
                    group_id=row.id,
                    direction="egress",
                    protocol="-1",
                    cidr="0.0.0.0/0",
                )
            )
            await s.flush()
        return row

    async def vpc_key(self, s: AsyncSession, caller: Caller, vpc_id: str | None) -> str:
        """The ``vpc_id`` groups of the caller's VPC ``vpc_id`` carry: "" for the default VPC
        (or none given), the VPC's id for another of its VPCs (checked to be the caller's)."""
        if not vpc_id:
            return ""
        row = await self.ctrl.vpcs.vpc(s, caller, vpc_id)
        return "" if row.is_default else row.id

    async def for_vpc(
        self, s: AsyncSession, caller: Caller, refs: builtins.list[str], vpc_id: str | None
    ) -> builtins.list[SecurityGroup]:
        """Groups for an instance of VPC ``vpc_id`` (None: the default VPC): by id, or by name
        in that VPC; a group of another VPC is refused (AWS's InvalidParameter)."""
        vpc = await self.vpc_key(s, caller, vpc_id)
        rows = [await self.resolve(s, caller, ref, vpc) for ref in refs]
        for row in rows:
            if row.vpc_id != vpc:
                raise Invalid(
                    f"security group {row.id} belongs to "
                    f"{row.vpc_id or 'the default VPC'}, the instance's subnet to "
                    f"{vpc or 'the default VPC'}: give groups of the subnet's VPC",
                    field="security_groups",
                    ec2_code="InvalidParameter",
                )
        return rows

    async def resolve(
        self, s: AsyncSession, caller: Caller, ref: str, vpc: str = ""
    ) -> SecurityGroup:
        """A group of the caller's by id (sg-…), or by name in VPC ``vpc`` ("" the default
        VPC: names name its groups, as EC2's GroupName does; other VPCs' groups by id)."""
        if ref.startswith("sg-"):
            if not ids.is_id("security_group", ref) and not _short_id(ref):
                raise Invalid(
                    f"security group id {ref!r} is malformed (sg- and 8 or 17 hex digits)",
                    field="GroupId",
                    ec2_code="InvalidGroupId.Malformed",
                )
            row = await s.get(SecurityGroup, ref)
        else:
            if ref == "default":
                await self.ensure_default(s, caller.account_id, vpc)
            row = await s.scalar(
                select(SecurityGroup).where(
                    SecurityGroup.account_id == caller.account_id,
                    SecurityGroup.vpc_id == vpc,
                    SecurityGroup.name == ref,
                )
            )
        if row is None or row.account_id != caller.account_id:
            raise NotFound(
                f"the security group '{ref}' does not exist",
                field="GroupId",
                resource="security_group",
            )
        return row

    async def create(
        self,
        caller: Caller,
        name: str,
        description: str,
        dry_run: bool = False,
        tags: dict[str, str] | None = None,
        vpc_id: str | None = None,
    ) -> SecurityGroup:
        if not name or len(name) > 255:
            raise Invalid("GroupName must be 1-255 characters", field="GroupName")
        if name.lower().startswith("sg-"):
            raise Invalid(f"group name {name!r}: names cannot start with sg-", field="GroupName")
        if not description or len(description) > 255:
            raise Invalid("GroupDescription must be 1-255 characters", field="GroupDescription")
        async with self.ctrl.store.write() as s:
            vpc = await self.vpc_key(s, caller, vpc_id)
            await self.ensure_default(s, caller.account_id, vpc)
            if name == "default":
                raise Invalid(
                    "the name 'default' is reserved for the default group",
                    field="GroupName",
                    ec2_code="InvalidGroup.Reserved",
                )
            if await s.scalar(
                select(SecurityGroup.id).where(
                    SecurityGroup.account_id == caller.account_id,
                    SecurityGroup.vpc_id == vpc,
                    SecurityGroup.name == name,
                )
            ):
                raise Exists(
                    f"the security group '{name}' already exists" + (f" in {vpc}" if vpc else ""),
                    field="GroupName",
                    resource="security_group",
                )
            row = SecurityGroup(
                id=ids.new_id("security_group"),
                account_id=caller.account_id,
                name=name,
                description=description,
                vpc_id=vpc,
            )
            s.add(row)
            s.add(
                SecurityGroupRule(
                    id=ids.new_id("security_group_rule"),
                    group_id=row.id,
                    direction="egress",
                    protocol="-1",
                    cidr="0.0.0.0/0",
                )
            )
            await quotas.enforce(s, self.ctrl.settings, caller.account_id, "security_groups")
            if tags:
                await self.ctrl.tags.apply(s, caller.account_id, row.id, "security-group", tags)
            if dry_run:
                raise DryRunPassed("CreateSecurityGroup would have succeeded")
        return row

    async def delete(self, caller: Caller, ref: str, dry_run: bool = False) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            if row.name == "default":
                raise WrongState(
                    "the default security group cannot be deleted",
                    field="GroupId",
                    resource="security_group",
                    ec2_code="CannotDelete",
                )
            users = list(
                await s.scalars(
                    select(Instance.id)
                    .join(InstanceSecurityGroup, InstanceSecurityGroup.instance_id == Instance.id)
                    .where(InstanceSecurityGroup.group_id == row.id, Instance.state != "terminated")
                )
            )
            if users:
                raise WrongState(
                    f"security group {row.id} is used by {', '.join(users)}; terminate them first",
                    resource="security_group",
                    ec2_code="DependencyViolation",
                )
            refs = list(
                await s.scalars(
                    select(SecurityGroupRule.group_id).where(
                        SecurityGroupRule.source_group_id == row.id,
                        SecurityGroupRule.group_id != row.id,
                    )
                )
            )
            if refs:
                raise WrongState(
                    f"security group {row.id} is referenced by rules of "
                    f"{', '.join(sorted(set(refs)))}; revoke those first",
                    resource="security_group",
                    ec2_code="DependencyViolation",
                )
            if dry_run:
                raise DryRunPassed("DeleteSecurityGroup would have succeeded")
            await s.execute(
                delete(InstanceSecurityGroup).where(InstanceSecurityGroup.group_id == row.id)
            )
            for rule in await s.scalars(
                select(SecurityGroupRule).where(SecurityGroupRule.group_id == row.id)
            ):
                await s.delete(rule)
            await self.ctrl.tags.delete_resource(s, row)

    async def _source(
        self, s: AsyncSession, caller: Caller, p: Permission, group: SecurityGroup
    ) -> Permission:
        """A rule's source group (by id, or by name in ``group``'s VPC): in the same VPC,
        where its members can be."""
        if p.group_id is None:
            return p
        src = await s.get(SecurityGroup, p.group_id) if p.group_id.startswith("sg-") else None
        if src is None and not p.group_id.startswith("sg-"):
            src = await s.scalar(
                select(SecurityGroup).where(
                    SecurityGroup.account_id == caller.account_id,
                    SecurityGroup.vpc_id == group.vpc_id,
                    SecurityGroup.name == p.group_id,
                )
            )
        if src is None:
            raise NotFound(
                f"the security group '{p.group_id}' does not exist",
                field="SourceSecurityGroup",
                resource="security_group",
            )
        if src.vpc_id != group.vpc_id:
            raise Invalid(
                f"security group {src.id} is in another VPC than {group.id}: a rule names a "
                "group of its own VPC",
                field="SourceSecurityGroup",
                ec2_code="InvalidGroup.NotFound",
            )
        return Permission(p.protocol, p.from_port, p.to_port, None, src.id, p.description)

    async def authorize(
        self,
        caller: Caller,
        ref: str,
        direction: str,
        perms: builtins.list[Permission],
        dry_run: bool = False,
    ) -> builtins.list[SecurityGroupRule]:
        if not perms:
            raise Invalid(
                "give at least one permission (IpPermissions or IpProtocol with a source)",
                field="IpPermissions",
                ec2_code="MissingParameter",
            )
        wanted = [normalize(p) for p in perms]
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            wanted = [await self._source(s, caller, p, row) for p in wanted]
            have = {
                _key(r)
                for r in await s.scalars(
                    select(SecurityGroupRule).where(
                        SecurityGroupRule.group_id == row.id,
                        SecurityGroupRule.direction == direction,
                    )
                )
            }
            added = []
            for p in wanted:
                if _key(p) in have:
                    raise Exists(
                        f"the rule {_describe(p)} already exists in {row.id}",
                        resource="security_group_rule",
                        ec2_code="InvalidPermission.Duplicate",
                    )
                have.add(_key(p))
                rule = SecurityGroupRule(
                    id=ids.new_id("security_group_rule"),
                    group_id=row.id,
                    direction=direction,
                    protocol=p.protocol,
                    from_port=p.from_port,
                    to_port=p.to_port,
                    cidr=p.cidr,
                    source_group_id=p.group_id,
                    description=p.description,
                )
                s.add(rule)
                added.append(rule)
            if dry_run:
                raise DryRunPassed(f"Authorize {direction} would have succeeded")
            # the push is recorded with the rules: a crash before it still pushes at start
            pushes = await self.ctrl.network_pushes.record_rules(
                s, row.account_id, "security group rules added"
            )
        await self.ctrl.network_pushes.settle(pushes)  # in force in the kernel before we answer
        return added

    async def revoke(
        self,
        caller: Caller,
        ref: str,
        direction: str,
        perms: builtins.list[Permission],
        dry_run: bool = False,
    ) -> builtins.list[Permission]:
        """Remove matching rules; returns the permissions that matched none."""
        if not perms:
            raise Invalid(
                "give at least one permission", field="IpPermissions", ec2_code="MissingParameter"
            )
        wanted = [normalize(p) for p in perms]
        async with self.ctrl.store.write() as s:
            row = await self.resolve(s, caller, ref)
            wanted = [await self._source(s, caller, p, row) for p in wanted]
            rules = {
                _key(r): r
                for r in await s.scalars(
                    select(SecurityGroupRule).where(
                        SecurityGroupRule.group_id == row.id,
                        SecurityGroupRule.direction == direction,
                    )
                )
            }
            unknown = [p for p in wanted if _key(p) not in rules]
            if len(unknown) == len(wanted):
                raise NotFound(
                    f"the rule {_describe(unknown[0])} does not exist in {row.id}",
                    resource="security_group_rule",
                    ec2_code="InvalidPermission.NotFound",
                )
            if dry_run:
                raise DryRunPassed(f"Revoke {direction} would have succeeded")
            for p in wanted:
                rule = rules.pop(_key(p), None)
                if rule is not None:
                    await s.delete(rule)
            pushes = await self.ctrl.network_pushes.record_rules(
                s, row.account_id, "security group rules revoked"
            )
        await self.ctrl.network_pushes.settle(pushes)
        return unknown

    async def list(self, caller: Caller) -> tuple[list[SecurityGroup], list[SecurityGroupRule]]:
        async with self.ctrl.store.read() as s:
            has_default = await s.scalar(
                select(SecurityGroup.id).where(
                    SecurityGroup.account_id == caller.account_id,
                    SecurityGroup.vpc_id == "",
                    SecurityGroup.name == "default",
                )
            )
        if has_default is None:  # made on first use, so every account has one
            async with self.ctrl.store.write() as s:
                await self.ensure_default(s, caller.account_id)
        async with self.ctrl.store.read() as s:
            groups = list(
                await s.scalars(
                    select(SecurityGroup)
                    .where(SecurityGroup.account_id == caller.account_id)
                    .order_by(SecurityGroup.created_at)
                )
            )
            rules = list(
                await s.scalars(
                    select(SecurityGroupRule).where(
                        SecurityGroupRule.group_id.in_([g.id for g in groups])
                    )
                )
            )
        return groups, rules

    async def for_instances(
        self, s: AsyncSession, instance_ids: builtins.list[str]
    ) -> dict[str, builtins.list[tuple[str, str]]]:
        """(group id, name) per instance."""
        out: dict[str, builtins.list[tuple[str, str]]] = {}
        if not instance_ids:
            return out
        rows = await s.execute(
            select(InstanceSecurityGroup.instance_id, SecurityGroup.id, SecurityGroup.name)
            .join(SecurityGroup, SecurityGroup.id == InstanceSecurityGroup.group_id)
            .where(InstanceSecurityGroup.instance_id.in_(instance_ids))
        )
        for iid, gid, name in rows:
            out.setdefault(iid, []).append((gid, name))
        return out


def _short_id(ref: str) -> bool:
    rest = ref[3:]
    return 8 <= len(rest) <= 17 and all(c in "0123456789abcdef" for c in rest)


def _describe(p: Permission) -> str:
    ports = "" if p.from_port is None else f" {p.from_port}-{p.to_port}"
    return f"{p.protocol}{ports} {'from ' + (p.cidr or p.group_id or '')}"


class SecurityGroupRules:
    """Rules as resources (``sgr-`` ids): revoke, describe and change them by id, set their
    descriptions. Every change reaches the packet filter before it returns."""

    def __init__(self, groups: SecurityGroups) -> None:
        self.groups = groups
        self.ctrl = groups.ctrl

    async def _by_id(
        self, s: AsyncSession, group: SecurityGroup, direction: str | None, rule_ids: list[str]
    ) -> list[SecurityGroupRule]:
        rows = {
            r.id: r
            for r in await s.scalars(
                select(SecurityGroupRule).where(
                    SecurityGroupRule.group_id == group.id,
                    SecurityGroupRule.id.in_(rule_ids),
                )
            )
            if direction is None or r.direction == direction
        }
        gone = [r for r in rule_ids if r not in rows]
        if gone:
            raise NotFound(
                f"the security group rule{'s' if len(gone) > 1 else ''} {', '.join(gone)} "
                f"do{'' if len(gone) > 1 else 'es'} not exist in {group.id}"
                + (f" ({direction})" if direction else ""),
                resource="security_group_rule",
                ec2_code="InvalidSecurityGroupRuleId.NotFound",
            )
        return [rows[r] for r in rule_ids]

    async def revoke(
        self, caller: Caller, ref: str, direction: str, rule_ids: list[str], dry_run: bool = False
    ) -> list[SecurityGroupRule]:
        async with self.ctrl.store.write() as s:
            group = await self.groups.resolve(s, caller, ref)
            rows = await self._by_id(s, group, direction, rule_ids)
            if dry_run:
                raise DryRunPassed(f"Revoke {direction} would have succeeded")
            for r in rows:
                await s.delete(r)
            pushes = await self.ctrl.network_pushes.record_rules(
                s, group.account_id, "security group rules revoked"
            )
        await self.ctrl.network_pushes.settle(pushes)
        return rows

    async def describe_all(self, caller: Caller) -> list[SecurityGroupRule]:
        _, rules = await self.groups.list(caller)
        return rules

    async def set_descriptions(
        self,
        caller: Caller,
        ref: str,
        direction: str,
        by_id: dict[str, str],
        by_permission: list[Permission],
        dry_run: bool = False,
    ) -> None:
        """Descriptions of existing rules, named by id or by their permission."""
        async with self.ctrl.store.write() as s:
            group = await self.groups.resolve(s, caller, ref)
            rows = await self._by_id(s, group, direction, list(by_id))
            have = {
                _key(r): r
                for r in await s.scalars(
                    select(SecurityGroupRule).where(
                        SecurityGroupRule.group_id == group.id,
                        SecurityGroupRule.direction == direction,
                    )
                )
            }
            matched = []
            for p in by_permission:
                p = await self.groups._source(s, caller, normalize(p), group)
                rule = have.get(_key(p))
                if rule is None:
                    raise NotFound(
                        f"the rule {_describe(p)} does not exist in {group.id}",
                        resource="security_group_rule",
                        ec2_code="InvalidPermission.NotFound",
                    )
                matched.append((rule, p.description))
            if dry_run:
                raise DryRunPassed("UpdateSecurityGroupRuleDescriptions would have succeeded")
            for r in rows:
                r.description = by_id[r.id]
            for rule, text in matched:
                rule.description = text

    async def modify(
        self,
        caller: Caller,
        ref: str,
        changes: dict[str, Permission],
        dry_run: bool = False,
    ) -> None:
        """Replace rules in place, keeping their ids (EC2's ModifySecurityGroupRules)."""
        wanted = {rid: normalize(p) for rid, p in changes.items()}
        async with self.ctrl.store.write() as s:
            group = await self.groups.resolve(s, caller, ref)
            rows = await self._by_id(s, group, None, list(wanted))
            wanted = {
                rid: await self.groups._source(s, caller, p, group) for rid, p in wanted.items()
            }
            others = {
                (r.direction, _key(r))
                for r in await s.scalars(
                    select(SecurityGroupRule).where(SecurityGroupRule.group_id == group.id)
                )
                if r.id not in wanted
            }
            for r in rows:
                p = wanted[r.id]
                if (r.direction, _key(p)) in others:
                    raise Exists(
                        f"the rule {_describe(p)} already exists in {group.id}",
                        resource="security_group_rule",
                        ec2_code="InvalidPermission.Duplicate",
                    )
                others.add((r.direction, _key(p)))
            if dry_run:
                raise DryRunPassed("ModifySecurityGroupRules would have succeeded")
            for r in rows:
                p = wanted[r.id]
                r.protocol, r.from_port, r.to_port = p.protocol, p.from_port, p.to_port
                r.cidr, r.source_group_id, r.description = p.cidr, p.group_id, p.description
            pushes = await self.ctrl.network_pushes.record_rules(
                s, group.account_id, "security group rules modified"
            )
        await self.ctrl.network_pushes.settle(pushes)
