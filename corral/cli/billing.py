"""`corral usage` and `corral bill`: an account's metered usage and its bill for a month."""

from __future__ import annotations

import csv
import io

import typer
from rich.table import Table

from corral import models
from corral.cli.common import console, fail, opts

app = typer.Typer()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.4f}"


@app.command("usage")
def usage(
    ctx: typer.Context,
    account: str | None = typer.Option(
        None, "--account", "-a", help="account name or id (default: your own; admin: any)"
    ),
    start: str | None = typer.Option(
        None, "--start", help="ISO time with zone (default: the start of this month)"
    ),
    end: str | None = typer.Option(None, "--end", help="ISO time with zone (default: now)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Usage per kind, type and state: resource-hours, vCPU-hours, GiB-hours; CPU-hours and
    network bytes used."""
    u = opts(ctx).client().usage_show(account, start, end)
    if as_json:
        print(u.model_dump_json(indent=2))
        return
    console.print(f"account {u.account_name} ({u.account_id}), {u.start} to {u.end}")
    table = Table(box=None, header_style="bold")
    for col in ("KIND", "DETAIL", "STATE", "HOURS", "AMOUNT-HOURS", "USED", "RESOURCES"):
        table.add_column(col)
    for x in u.lines:
        table.add_row(
            x.kind,
            x.detail,
            x.state,
            _hours(x.seconds),
            _hours(x.amount_seconds),
            _used(x.kind, x.quantity),
            str(x.resources),
        )
    console.print(table)


def _used(kind: str, quantity: float) -> str:
    if kind == "cpu":
        return f"{quantity / 3600:.4f} core-h"
    if kind == "network":
        return f"{quantity / (1 << 20):.2f} MiB"
    return ""


FIELDS = ("kind", "detail", "state", "quantity", "unit", "unit_price", "amount", "resources")


def render_bill(b: models.Bill, fmt: str) -> str:
    """The bill as ``json``, ``csv`` (one row a line, then the total) or a plain table."""
    if fmt == "json":
        return b.model_dump_json(indent=2)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*FIELDS, "currency"])
        for x in b.lines:
            w.writerow([*(getattr(x, f) for f in FIELDS), b.currency])
        w.writerow(["total", "", "", "", "", "", b.total, "", b.currency])
        return out.getvalue().rstrip("\n")
    rows = [f"bill of account {b.account_name} ({b.account_id}) for {b.month}, {b.currency}"]
    rows.append(f"{'ITEM':<40} {'QUANTITY':>14} {'UNIT':<10} {'PRICE':>12} {'AMOUNT':>12}")
    for x in b.lines:
        item = " ".join(p for p in (x.kind, x.detail, x.state) if p)
        rows.append(
            f"{item:<40} {x.quantity:>14.4f} {x.unit:<10} {x.unit_price:>12.6f} {x.amount:>12.6f}"
        )
    rows.append(f"{'TOTAL':<40} {'':>14} {'':<10} {'':>12} {b.total:>12.6f}")
    return "\n".join(rows)


@app.command("bill")
def bill(
    ctx: typer.Context,
    month: str = typer.Option(..., "--month", "-m", help="YYYY-MM (UTC), e.g. 2026-12"),
    account: str | None = typer.Option(
        None, "--account", "-a", help="account name or id (default: your own; admin: any)"
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json"),
) -> None:
    """An account's bill for a month, priced from the price table (docs/billing.md)."""
    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format {fmt!r} must be table, csv or json")
    print(render_bill(opts(ctx).client().bill_show(month, account), fmt))
