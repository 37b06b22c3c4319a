"""Quotas per account: how many instances, vCPUs, MiB of memory, volumes, GiB of volumes,
snapshots, elastic IPs and security groups an account may hold. The defaults are settings
(``quota_*``); an admin overrides them per account (``corral quota set``). -1 is unlimited.

A quota is checked inside the write transaction that makes the resource, after the new rows
are flushed: the account's usage is counted from the store as it will be committed, and the
transaction rolls back when it is over a limit. Write transactions are exclusive (SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's writer lock; store/db.py) and the account row is locked
besides, so concurrent launches never overshoot."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.config import Settings
from corral.controller.accounts import Accounts, Caller
from corral.errors import Code, CorralError, Forbidden, Invalid
from corral.store import Store
from corral.store.models import (
    Account,
    AccountQuota,
    ElasticAddress,
    Instance,
    SecurityGroup,
    Snapshot,
    Volume,
)

UNLIMITED = -1


@dataclass(frozen=True)
class Quota:
    name: str
    unit: str
    ec2_code: str  # AWS's code when it is exceeded
    what: str


QUOTAS: dict[str, Quota] = {
    q.name: q
    for q in (
        Quota("instances", "", "InstanceLimitExceeded", "instances not terminated"),
        Quota("vcpus", "", "VcpuLimitExceeded", "vCPUs of instances not terminated"),
        Quota("memory_mib", "MiB", "InstanceLimitExceeded", "memory of instances not terminated"),
        Quota("volumes", "", "VolumeLimitExceeded", "volumes"),
        Quota("volume_gib", "GiB", "VolumeLimitExceeded", "GiB of volumes"),
        Quota("snapshots", "", "SnapshotLimitExceeded", "snapshots"),
        Quota("elastic_ips", "", "AddressLimitExceeded", "elastic IP addresses"),
        Quota(
            "security_groups",
            "",
            "SecurityGroupLimitExceeded",
            "security groups (each VPC's default group not counted)",
        ),
    )
}


class QuotaExceeded(CorralError):
    code = Code.NO_RESOURCES
    reason = "quota"


def default(settings: Settings, name: str) -> int:
    value = getattr(settings, f"quota_{name}")
    assert isinstance(value, int)
    return value


def check_name(name: str) -> Quota:
    q = QUOTAS.get(name)
    if q is None:
        raise Invalid(
            f"quota {name!r} does not exist; use one of {', '.join(QUOTAS)}", field="quota"
        )
    return q


async def limits(s: AsyncSession, settings: Settings, account_id: str) -> dict[str, int]:
    """The account's limits: the settings' defaults with its own overrides over them."""
    out = {name: default(settings, name) for name in QUOTAS}
    for row in await s.scalars(select(AccountQuota).where(AccountQuota.account_id == account_id)):
        if row.resource in out:
            out[row.resource] = int(row.value)
    return out


async def overrides(s: AsyncSession, account_id: str) -> dict[str, int]:
    rows = await s.scalars(select(AccountQuota).where(AccountQuota.account_id == account_id))
    return {r.resource: int(r.value) for r in rows}


async def usage(s: AsyncSession, account_id: str) -> dict[str, int]:
    """What the account holds now, counted from the store (this transaction's view)."""
    n, cpus, mem = (
        await s.execute(
            select(
                func.count(Instance.id),
                func.coalesce(func.sum(Instance.cpus), 0),
                func.coalesce(func.sum(Instance.memory), 0),
            ).where(Instance.account_id == account_id, Instance.state != "terminated")
        )
    ).one()
    vols, gib = (
        await s.execute(
            select(func.count(Volume.id), func.coalesce(func.sum(Volume.size), 0)).where(
                Volume.account_id == account_id, Volume.state != "deleted"
            )
        )
    ).one()
    snaps = await s.scalar(
        select(func.count(Snapshot.id)).where(
            Snapshot.account_id == account_id, Snapshot.state != "deleted"
        )
    )
    eips = await s.scalar(
        select(func.count(ElasticAddress.id)).where(ElasticAddress.account_id == account_id)
    )
    # the groups the account made: each VPC's own "default" group comes with the VPC (a VPC
    # must not be refused, nor the quota used up, by the group Corral makes for it)
    sgs = await s.scalar(
        select(func.count(SecurityGroup.id)).where(
            SecurityGroup.account_id == account_id, SecurityGroup.name != "default"
        )
    )
    return {
        "instances": int(n),
        "vcpus": int(cpus),
        "memory_mib": int(mem) >> 20,
        "volumes": int(vols),
        "volume_gib": int(gib),
        "snapshots": int(snaps or 0),
        "elastic_ips": int(eips or 0),
        "security_groups": int(sgs or 0),
    }


async def lock_account(s: AsyncSession, account_id: str) -> None:
    """Lock the account's row for the rest of the transaction (PostgreSQL; SQLite's write
    transactions are exclusive anyway)."""
    await s.execute(select(Account.id).where(Account.id == account_id).with_for_update())


async def enforce(s: AsyncSession, settings: Settings, account_id: str, *names: str) -> None:
    """Raise QuotaExceeded (the caller's transaction rolls back) when the account, with what
    this transaction has added (flushed here), is over one of the quotas ``names``."""
    await lock_account(s, account_id)
    await s.flush()
    lim = await limits(s, settings, account_id)
    used = await usage(s, account_id)
    for name in names:
        if lim[name] != UNLIMITED and used[name] > lim[name]:
            q = QUOTAS[name]
            raise QuotaExceeded(
                f"quota {name} of account {account_id} is {lim[name]}{q.unit and ' ' + q.unit}; "
                f"this request would make {used[name]} {q.what}: free some, or ask an admin "
                f"to raise it (`corral quota set {name} N --account {account_id}`)",
                field=name,
                resource="quota",
                ec2_code=q.ec2_code,
            )


async def instance_headroom(
    s: AsyncSession, settings: Settings, account_id: str, cpus: int, memory: int
) -> int | None:
    """How many more instances of ``cpus`` vCPUs and ``memory`` bytes the account may run
    (None: no limit applies)."""
    await lock_account(s, account_id)
    lim = await limits(s, settings, account_id)
    used = await usage(s, account_id)
    room: list[int] = []
    if lim["instances"] != UNLIMITED:
        room.append(lim["instances"] - used["instances"])
    if lim["vcpus"] != UNLIMITED and cpus > 0:
        room.append((lim["vcpus"] - used["vcpus"]) // cpus)
    mib = memory >> 20
    if lim["memory_mib"] != UNLIMITED and mib > 0:
        room.append((lim["memory_mib"] - used["memory_mib"]) // mib)
    return max(0, min(room)) if room else None


async def launch_refusal(
    s: AsyncSession, settings: Settings, account_id: str, cpus: int, memory: int, want: int
) -> QuotaExceeded:
    """The error for a launch of ``want`` instances that does not fit: names the first quota
    that stops it."""
    lim = await limits(s, settings, account_id)
    used = await usage(s, account_id)
    mib = memory >> 20
    for name, add in (("instances", want), ("vcpus", cpus * want), ("memory_mib", mib * want)):
        if lim[name] != UNLIMITED and used[name] + add > lim[name]:
            q = QUOTAS[name]
            return QuotaExceeded(
                f"quota {name} of account {account_id} is {lim[name]}"
                f"{q.unit and ' ' + q.unit}; {used[name]} in use, this launch needs {add} "
                f"more: terminate some instances, or ask an admin to raise it "
                f"(`corral quota set {name} N --account {account_id}`)",
                field=name,
                resource="quota",
                ec2_code=q.ec2_code,
            )
    return QuotaExceeded("the account's quotas do not allow this launch", resource="quota")


async def set_limit(s: AsyncSession, account_id: str, name: str, value: int | None) -> None:
    """Set the account's own limit (None: back to the default)."""
    check_name(name)
    if value is not None and value < UNLIMITED:
        raise Invalid(
            f"quota {name} value {value} must be 0 or more, or -1 (unlimited)", field="value"
        )
    row = await s.get(AccountQuota, (account_id, name))
    if value is None:
        if row is not None:
            await s.delete(row)
    elif row is None:
        s.add(AccountQuota(account_id=account_id, resource=name, value=value))
    else:
        row.value = value


@dataclass(frozen=True)
class QuotaView:
    name: str
    limit: int  # -1: unlimited
    used: int
    default: int
    overridden: bool
    ec2_code: str


class Quotas:
    """The controller's face of quotas: show an account's limits and usage, set its own."""

    def __init__(self, store: Store, settings: Settings, accounts: Accounts) -> None:
        self.store, self.settings, self.accounts = store, settings, accounts

    async def show(self, account: str) -> tuple[Account, list[QuotaView]]:
        acct = await self.accounts.get(account)
        async with self.store.read() as s:
            lim = await limits(s, self.settings, acct.id)
            used = await usage(s, acct.id)
            own = await overrides(s, acct.id)
        return acct, [
            QuotaView(
                name=n,
                limit=lim[n],
                used=used[n],
                default=default(self.settings, n),
                overridden=n in own,
                ec2_code=q.ec2_code,
            )
            for n, q in QUOTAS.items()
        ]

    async def set(self, caller: Caller, account: str, name: str, value: int | None) -> None:
        """An admin sets ``account``'s limit ``name`` (None: back to the default)."""
        if not caller.admin:
            raise Forbidden("only an admin account may set quotas")
        acct = await self.accounts.get(account)
        async with self.store.write() as s:
            await set_limit(s, acct.id, name, value)
