"""Metering: usage derived from recorded state changes, and bills priced from a table.

Every change that matters for billing — an instance's state, type or size; a volume, snapshot
or private image made, resized or deleted; an elastic IP allocated, associated, disassociated
or released — writes a ``UsageRecord`` in the very transaction that makes the change (a
SQLAlchemy ``before_flush`` hook sees every ORM change, whichever code path makes it). A record
says "from this time on, this resource is in this state" until the resource's next record, so
each second of each resource belongs to exactly one record: nothing is counted twice, and a
daemon killed at any point loses nothing (the change and its record commit together or not
at all). Usage over a period is the records' intervals clipped to it.

Prices (docs/billing.md): ``<state_dir>/prices.toml`` or the ``prices_file`` setting, over
built-in defaults: per hour per instance type while running, per GiB-month per storage kind
(a month is ``hours_per_month`` hours), per hour per elastic IP, idle or associated, per
core-hour of CPU used and per GiB of network traffic.

What an instance uses rather than holds — CPU-seconds and network bytes — comes from the nodes'
counters (the agent's ``stats``: cgroup CPU time, the tap's bytes), read every
``meter_interval`` seconds (``meter``). Each reading's growth over the last one metered (kept
per instance in ``usage_meters``, updated in the same transaction as the records it causes) is
written as a ``cpu`` or ``network`` record whose ``amount`` is what was used. Counters restart
from zero when a QEMU restarts (CPU: a new cgroup) or the instance moves to another node, and
``advance`` tells such a reset from growth, so nothing is counted twice across agent, QEMU or
daemon restarts; what an instance used between the last reading and its QEMU's end is not
counted (at most one interval)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, attributes

from corral.config import Settings
from corral.controller.accounts import Accounts, Caller
from corral.errors import CorralError, Forbidden, Invalid
from corral.node.client import NodeClient
from corral.node.spec import NodeStats
from corral.store import Store
from corral.store.models import (
    Account,
    ElasticAddress,
    Image,
    Instance,
    Snapshot,
    UsageMeter,
    UsageRecord,
    Volume,
    utcnow,
)

log = logging.getLogger(__name__)
METER_WAIT = 20.0  # seconds a node may take to answer ``stats`` for metering

# the clock of the records (a test replaces it to script a month)
now: Callable[[], dt.datetime] = utcnow

GiB = 1 << 30
GONE = "gone"


def _v(obj: Any, name: str) -> Any:
    """The attribute, or its column's default when a new row does not set it (defaults are
    applied at the INSERT, after this hook)."""
    value = getattr(obj, name)
    if value is None:
        default = type(obj).__table__.c[name].default
        if default is not None and default.is_scalar:
            return default.arg
    return value


def _instance_detail(inst: Instance) -> str:
    mib = int(_v(inst, "memory") or 0) >> 20
    return _v(inst, "instance_type") or f"custom-{_v(inst, 'cpus')}cpu-{mib}mib"


def _changed(obj: Any, *names: str) -> bool:
    state = attributes.instance_state(obj)
    return any(state.attrs[n].history.has_changes() for n in names)


def _record(
    session: Session, obj: Any, kind: str, state: str, detail: str = "", amount: float = 0.0
) -> None:
    account = getattr(obj, "account_id", None)
    if not account:
        return
    session.add(
        UsageRecord(
            account_id=account,
            resource_id=obj.id,
            kind=kind,
            time=now(),
            state=state,
            detail=detail[:64],
            amount=float(amount),
        )
    )


def _observe(session: Session, obj: Any, new: bool) -> None:
    if isinstance(obj, Instance):
        if new or _changed(obj, "state", "instance_type", "cpus", "memory"):
            detail = _instance_detail(obj)
            _record(session, obj, "instance", _v(obj, "state"), detail, _v(obj, "cpus") or 0)
    elif isinstance(obj, Volume):
        if new or _changed(obj, "size", "volume_type"):
            vtype = _v(obj, "volume_type") or ""
            _record(session, obj, "volume", "exists", vtype, obj.size or 0)
    elif isinstance(obj, Snapshot):
        if new or _changed(obj, "volume_size"):
            _record(session, obj, "snapshot", "exists", "", obj.volume_size or 0)
    elif isinstance(obj, Image):
        if new or _changed(obj, "public", "size"):
            state = "public" if _v(obj, "public") else "private"
            _record(session, obj, "image", state, obj.name or "", (_v(obj, "size") or 0) / GiB)
    elif isinstance(obj, ElasticAddress) and (new or _changed(obj, "instance_id")):
        _record(session, obj, "address", "associated" if obj.instance_id else "idle", "", 1)


def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    for obj in list(session.new):
        _observe(session, obj, True)
    for obj in list(session.dirty):
        if session.is_modified(obj, include_collections=False):
            _observe(session, obj, False)
    for obj in list(session.deleted):
        kind = {
            Instance: "instance",
            Volume: "volume",
            Snapshot: "snapshot",
            Image: "image",
            ElasticAddress: "address",
        }.get(type(obj))
        if kind is not None:
            _record(session, obj, kind, GONE)


_installed = False


def install() -> None:
    """Record usage from every ORM session of this process (idempotent)."""
    global _installed
    if not _installed:
        event.listen(Session, "before_flush", _before_flush)
        _installed = True


async def backfill(s: AsyncSession) -> int:
    """A first record for each live resource that has none (made before metering existed),
    from now on; returns how many were written."""
    have = set(await s.scalars(select(UsageRecord.resource_id).distinct()))
    n = 0
    rows: list[Any] = [
        *await s.scalars(select(Instance).where(Instance.state != "terminated")),
        *await s.scalars(select(Volume)),
        *await s.scalars(select(Snapshot)),
        *await s.scalars(select(Image).where(Image.account_id.is_not(None))),
        *await s.scalars(select(ElasticAddress)),
    ]
    sync = s.sync_session
    for row in rows:
        if row.id not in have:
            _observe(sync, row, True)
            n += 1
    return n


# -- counters: CPU-seconds and network bytes --------------------------------------------------

# kinds whose records are amounts used at their time (summed), not states held (intervals)
COUNTED = ("cpu", "network")
# a new QEMU's counter is believed only up to this many cores per vCPU since it started (an
# old cgroup's counter, left by a QEMU that died unseen, must not come back as new use)
CORES_PER_VCPU_MAX = 1.5


@dataclass(frozen=True)
class Counters:
    """One instance's counters as last metered (``usage_meters``) or as read now."""

    node_id: str
    qemu_started: float | None
    cpu_seconds: float | None
    net_rx_bytes: int | None  # what the guest received
    net_tx_bytes: int | None  # what the guest sent
    # unlimited CPU credits: core-seconds above the baseline with no credits (the node's)
    cpu_surplus: float | None = None


@dataclass(frozen=True)
class Used:
    cpu_seconds: float = 0.0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    cpu_surplus_seconds: float = 0.0

    def __add__(self, other: Used) -> Used:
        return Used(
            self.cpu_seconds + other.cpu_seconds,
            self.net_rx_bytes + other.net_rx_bytes,
            self.net_tx_bytes + other.net_tx_bytes,
            self.cpu_surplus_seconds + other.cpu_surplus_seconds,
        )


def advance(
    last: Counters | None, now_: Counters, read_at: float, vcpus: int = 1
) -> tuple[Counters, Used]:
    """What was used between ``last`` (None: never metered) and the reading ``now_``, and the
    counters to keep. A counter that is unreadable now keeps its last value and counts nothing.

    - CPU time is its cgroup's, made afresh with each QEMU: a new QEMU (its start time
      differs), another node, or a counter that went down restarts it from zero, and the
      whole reading is new (no more than ``CORES_PER_VCPU_MAX`` per vCPU since the QEMU
      started, in case the counter is an old cgroup's).
    - Network bytes are the tap's, which outlives a QEMU restart: only another node or a
      counter that went down restarts them.
    - The CPU surplus of unlimited credits is the node's (kept in the instance's directory
      across agent and QEMU restarts): it restarts like the bytes. Being CPU used above the
      baseline, its growth is never counted as more than the CPU counted for the same
      reading (a stale directory's old surplus on a node the instance comes back to is not
      billed again)."""
    moved = last is None or last.node_id != now_.node_id
    # a new QEMU when its start time differs from the last one's; where either is unknown,
    # only a counter that went down tells
    new_qemu = moved or (
        last is not None
        and now_.qemu_started is not None
        and last.qemu_started is not None
        and abs(now_.qemu_started - last.qemu_started) > 1.0
    )

    cpu_used, cpu_keep = 0.0, last.cpu_seconds if last is not None else None
    if now_.cpu_seconds is not None:
        before = None if new_qemu or last is None else last.cpu_seconds
        if before is not None and now_.cpu_seconds >= before:
            cpu_used = now_.cpu_seconds - before
        else:  # a new counter: all of it is new
            cpu_used = now_.cpu_seconds
            if now_.qemu_started is not None:
                most = max(0.0, read_at - now_.qemu_started) * vcpus * CORES_PER_VCPU_MAX
                cpu_used = min(cpu_used, most)
        cpu_keep = now_.cpu_seconds

    def _bytes(was: int | None, now_b: int | None) -> tuple[int, int | None]:
        if now_b is None:
            return 0, was
        if moved or was is None or now_b < was:
            return now_b, now_b
        return now_b - was, now_b

    rx, rx_keep = _bytes(last.net_rx_bytes if last is not None else None, now_.net_rx_bytes)
    tx, tx_keep = _bytes(last.net_tx_bytes if last is not None else None, now_.net_tx_bytes)
    surplus, surplus_keep = 0.0, last.cpu_surplus if last is not None else None
    if now_.cpu_surplus is not None:
        was = None if moved or last is None else last.cpu_surplus
        grown = now_.cpu_surplus - was if was is not None and now_.cpu_surplus >= was else None
        surplus = now_.cpu_surplus if grown is None else grown
        surplus = min(surplus, max(0.0, cpu_used))
        surplus_keep = now_.cpu_surplus
    if moved and last is not None:  # keep nothing of the old node's counters
        cpu_keep = now_.cpu_seconds
    kept = Counters(
        node_id=now_.node_id,
        qemu_started=now_.qemu_started
        if now_.qemu_started is not None
        else (None if moved or last is None else last.qemu_started),
        cpu_seconds=cpu_keep,
        net_rx_bytes=rx_keep,
        net_tx_bytes=tx_keep,
        cpu_surplus=surplus_keep,
    )
    return kept, Used(max(0.0, cpu_used), max(0, rx), max(0, tx), max(0.0, surplus))


def _counters(m: UsageMeter) -> Counters:
    return Counters(
        m.node_id,
        m.qemu_started or None,
        m.cpu_seconds,
        m.net_rx_bytes,
        m.net_tx_bytes,
        m.cpu_surplus,
    )


async def meter(s: AsyncSession, node_id: str, stats: NodeStats) -> Used:
    """Turn one node's counters into usage records (and keep them in ``usage_meters``), in
    the caller's transaction; only instances the store places on ``node_id``. Returns the
    totals recorded (for logs and tests)."""
    ids = [x.id for x in stats.instances]
    if not ids:
        return Used()
    insts = {i.id: i for i in await s.scalars(select(Instance).where(Instance.id.in_(ids)))}
    meters = {
        m.instance_id: m
        for m in await s.scalars(select(UsageMeter).where(UsageMeter.instance_id.in_(ids)))
    }
    when = now()
    total = Used()
    for x in stats.instances:
        inst = insts.get(x.id)
        if inst is None or inst.node_id != node_id or not inst.account_id:
            continue  # another node's (a migration's other end), or not the store's
        row = meters.get(x.id)
        reading = Counters(
            node_id,
            x.started_at,
            x.cpu_seconds,
            x.net_rx_bytes,
            x.net_tx_bytes,
            x.cpu_surplus_seconds,
        )
        kept, used = advance(
            _counters(row) if row is not None else None, reading, stats.time, x.vcpus
        )
        detail = _instance_detail(inst)
        for kind, state, amount in (
            ("cpu", "used", used.cpu_seconds),
            ("cpu", "surplus", used.cpu_surplus_seconds),
            ("network", "in", used.net_rx_bytes),
            ("network", "out", used.net_tx_bytes),
        ):
            if amount > 0:
                s.add(
                    UsageRecord(
                        account_id=inst.account_id,
                        resource_id=inst.id,
                        kind=kind,
                        time=when,
                        state=state,
                        detail=detail[:64],
                        amount=float(amount),
                    )
                )
        if row is None:
            row = UsageMeter(instance_id=x.id)
            s.add(row)
        row.node_id = kept.node_id
        row.qemu_started = kept.qemu_started or 0.0
        row.cpu_seconds = kept.cpu_seconds or 0.0
        row.net_rx_bytes = kept.net_rx_bytes or 0
        row.net_tx_bytes = kept.net_tx_bytes or 0
        row.cpu_surplus = kept.cpu_surplus
        row.time = when
        total = total + used
    return total


# -- usage ------------------------------------------------------------------------------------


@dataclass
class UsageLine:
    """Seconds a kind of resource spent in a state over the period (summed over resources),
    and the amount-seconds (vCPU-seconds of instances, GiB-seconds of storage)."""

    kind: str
    detail: str
    state: str
    seconds: float = 0.0
    amount_seconds: float = 0.0
    resources: set[str] = field(default_factory=set)
    # counted kinds (cpu, network): what was used, CPU-seconds or bytes
    quantity: float = 0.0


async def usage(
    s: AsyncSession, account_id: str, start: dt.datetime, end: dt.datetime
) -> list[UsageLine]:
    if end <= start:
        raise Invalid(f"the period ends ({end}) before it starts ({start})", field="end")
    records = list(
        await s.scalars(
            select(UsageRecord)
            .where(
                UsageRecord.account_id == account_id,
                UsageRecord.time < end,
                UsageRecord.kind.not_in(COUNTED),
            )
            .order_by(UsageRecord.resource_id, UsageRecord.time, UsageRecord.id)
        )
    )
    lines: dict[tuple[str, str, str], UsageLine] = {}
    by_resource: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in records:
        by_resource[r.resource_id].append(r)
    for rid, recs in by_resource.items():
        for i, r in enumerate(recs):
            if r.state in (GONE, "terminated"):
                continue
            until = recs[i + 1].time if i + 1 < len(recs) else end
            a, b = max(r.time, start), min(until, end)
            secs = (b - a).total_seconds()
            if secs <= 0:
                continue
            key = (r.kind, r.detail, r.state)
            line = lines.setdefault(key, UsageLine(r.kind, r.detail, r.state))
            line.seconds += secs
            line.amount_seconds += secs * r.amount
            line.resources.add(rid)
    counted = await s.execute(
        select(
            UsageRecord.kind,
            UsageRecord.detail,
            UsageRecord.state,
            UsageRecord.resource_id,
            func.sum(UsageRecord.amount),
        )
        .where(
            UsageRecord.account_id == account_id,
            UsageRecord.kind.in_(COUNTED),
            UsageRecord.time >= start,
            UsageRecord.time < end,
        )
        .group_by(UsageRecord.kind, UsageRecord.detail, UsageRecord.state, UsageRecord.resource_id)
    )
    for kind, detail, state, rid, total in counted.all():
        line = lines.setdefault((kind, detail, state), UsageLine(kind, detail, state))
        line.quantity += float(total or 0.0)
        line.resources.add(rid)
    return sorted(lines.values(), key=lambda x: (x.kind, x.detail, x.state))


# -- prices and bills --------------------------------------------------------------------------

DEFAULT_PRICES: dict[str, Any] = {
    "currency": "USD",
    "hours_per_month": 730,
    # per hour while running; "default" for types not listed; "vcpu" and "memory_gib" per
    # hour for instances sized without a type
    "instance": {
        "cr1.nano": 0.0058,
        "cr1.micro": 0.0116,
        "cr1.small": 0.023,
        "cr1.medium": 0.0464,
        "cr1.large": 0.0832,
        "default": 0.0,
        "vcpu": 0.02,
        "memory_gib": 0.005,
    },
    # per GiB-month; "volume.<type>" wins over "volume"
    "storage": {"volume": 0.10, "snapshot": 0.05, "image": 0.05},
    # per hour per address
    "address": {"idle": 0.005, "associated": 0.0},
    # what instances use (metered from the nodes' counters): per core-hour of CPU time, per
    # core-hour above a burstable instance's baseline with no credits left (unlimited mode:
    # the instance's hourly price covers its baseline, as AWS's $0.05 per vCPU-hour of
    # surplus credits), per GiB received ("network_in") and sent ("network_out") by the guest
    "usage": {
        "cpu_hour": 0.0,
        "cpu_surplus_hour": 0.05,
        "network_in_gib": 0.0,
        "network_out_gib": 0.01,
    },
}


@dataclass(frozen=True)
class Prices:
    table: dict[str, Any]

    @property
    def currency(self) -> str:
        return str(self.table["currency"])

    @property
    def hours_per_month(self) -> float:
        return float(self.table["hours_per_month"])

    def instance_hour(self, detail: str, vcpus_hours: float, hours: float) -> float:
        """The price of ``hours`` of an instance of type ``detail`` (custom sizes: per vCPU
        and GiB)."""
        t = self.table["instance"]
        if detail in t:
            return float(t[detail]) * hours
        if detail.startswith("custom-"):
            mib = int(detail.rsplit("-", 1)[1].removesuffix("mib"))
            return float(t["vcpu"]) * vcpus_hours + float(t["memory_gib"]) * hours * mib / 1024
        return float(t.get("default", 0.0)) * hours

    def storage(self, kind: str, detail: str) -> float:
        t = self.table["storage"]
        return float(t.get(f"{kind}.{detail}", t.get(kind, 0.0)))

    def address(self, state: str) -> float:
        return float(self.table["address"].get(state, 0.0))

    def used(self, key: str) -> float:
        return float(self.table["usage"].get(key, 0.0))


def _check_prices(table: dict[str, Any], where: str) -> None:
    for section in ("instance", "storage", "address", "usage"):
        if not isinstance(table.get(section), dict):
            raise Invalid(f"{where}: [{section}] must be a table of prices", field=section)
        for k, v in table[section].items():
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise Invalid(
                    f"{where}: {section}.{k} = {v!r} must be a price (a number, 0 or more)",
                    field=f"{section}.{k}",
                )
    hpm = table.get("hours_per_month")
    if not isinstance(hpm, int | float) or hpm <= 0:
        raise Invalid(f"{where}: hours_per_month must be more than 0", field="hours_per_month")


def load_prices(settings: Settings) -> Prices:
    """The built-in prices with the price file's over them (sections merged key by key)."""
    path = (
        Path(settings.prices_file) if settings.prices_file else settings.state_dir / "prices.toml"
    )
    table: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in DEFAULT_PRICES.items()
    }
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise Invalid(f"{path} is not valid TOML: {err}; fix or remove it") from err
        for key, value in data.items():
            if key not in table:
                raise Invalid(
                    f"{path}: unknown key {key!r}; use {', '.join(DEFAULT_PRICES)}", field=key
                )
            if isinstance(table[key], dict):
                if not isinstance(value, dict):
                    raise Invalid(f"{path}: {key} must be a table", field=key)
                table[key].update(value)
            else:
                table[key] = value
    elif settings.prices_file:
        raise Invalid(f"prices_file {path} does not exist", field="prices_file")
    _check_prices(table, str(path))
    return Prices(table)


@dataclass(frozen=True)
class BillLine:
    kind: str
    detail: str
    state: str
    quantity: float
    unit: str
    unit_price: float
    amount: float
    resources: int


def bill_lines(lines: list[UsageLine], prices: Prices) -> list[BillLine]:
    out = []
    for u in lines:
        hours = u.seconds / 3600
        if u.kind == "cpu":
            qty, unit = u.quantity / 3600, "core-hour"
            amount = prices.used("cpu_surplus_hour" if u.state == "surplus" else "cpu_hour") * qty
        elif u.kind == "network":
            qty, unit = u.quantity / GiB, "GiB"
            amount = prices.used(f"network_{u.state}_gib") * qty
        elif u.kind == "instance":
            if u.state != "running":
                continue  # as EC2: an instance is billed while it runs
            amount = prices.instance_hour(u.detail, u.amount_seconds / 3600, hours)
            qty, unit = hours, "hour"
        elif u.kind == "address":
            qty, unit = hours, "hour"
            amount = prices.address(u.state) * hours
        else:
            if u.kind == "image" and u.state != "private":
                continue
            qty = u.amount_seconds / 3600 / prices.hours_per_month
            unit = "GiB-month"
            amount = prices.storage(u.kind, u.detail) * qty
        out.append(
            BillLine(
                kind=u.kind,
                detail=u.detail,
                state=u.state,
                quantity=round(qty, 9),
                unit=unit,
                unit_price=round(amount / qty, 9) if qty else 0.0,
                amount=round(amount, 6),
                resources=len(u.resources),
            )
        )
    return out


def month_period(month: str) -> tuple[dt.datetime, dt.datetime]:
    """``2026-12`` -> [2026-12-01, 2027-01-01) in UTC."""
    try:
        first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError as err:
        raise Invalid(f"month {month!r} must be YYYY-MM (e.g. 2026-12)", field="month") from err
    nxt = (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
    return first, nxt


@dataclass(frozen=True)
class Bill:
    account_id: str
    account_name: str
    start: dt.datetime
    end: dt.datetime
    currency: str
    lines: list[BillLine]

    @property
    def total(self) -> float:
        return round(sum(x.amount for x in self.lines), 6)


class Metering:
    """The controller's face of metering: an account's usage over a period and its bill for a
    month (non-admins: their own account only)."""

    def __init__(self, store: Store, settings: Settings, accounts: Accounts) -> None:
        self.store, self.settings, self.accounts = store, settings, accounts
        install()

    async def _account(self, caller: Caller, account: str | None) -> Account:
        acct = await self.accounts.get(account or caller.account_id)
        if acct.id != caller.account_id and not caller.admin:
            raise Forbidden("only an admin may see another account's usage and bills")
        return acct

    async def usage(
        self,
        caller: Caller,
        account: str | None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> tuple[Account, dt.datetime, dt.datetime, list[UsageLine]]:
        """Usage from ``start`` (default: the start of this month) to ``end`` (default: now)."""
        acct = await self._account(caller, account)
        end = end or now()
        start = start or end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        async with self.store.read() as s:
            return acct, start, end, await usage(s, acct.id, start, end)

    async def bill(self, caller: Caller, account: str | None, month: str) -> Bill:
        acct = await self._account(caller, account)
        start, end = month_period(month)
        prices = load_prices(self.settings)
        async with self.store.read() as s:
            lines = await usage(s, acct.id, start, min(end, max(start, now())))
        return Bill(acct.id, acct.name, start, end, prices.currency, bill_lines(lines, prices))

    async def backfill(self) -> None:
        async with self.store.write() as s:
            await backfill(s)

    async def meter_node(self, node_id: str, client: NodeClient) -> Used:
        """Read one node's counters and record what its instances used."""
        stats = await asyncio.wait_for(client.stats(), METER_WAIT)
        async with self.store.write() as s:
            return await meter(s, node_id, stats)

    async def run(
        self, nodes: Callable[[], dict[str, NodeClient]], reachable: Callable[[str], bool]
    ) -> None:
        """Every ``meter_interval`` seconds, meter every reachable node (forever)."""
        while True:
            await asyncio.sleep(self.settings.meter_interval)
            for node_id, client in list(nodes().items()):
                if not reachable(node_id):
                    continue
                try:
                    await self.meter_node(node_id, client)
                except asyncio.CancelledError:
                    raise
                except (CorralError, TimeoutError) as err:
                    log.info("no usage counters from node %s this time: %s", node_id, err)
                except Exception:
                    log.exception("metering node %s failed", node_id)
