"""`corral quota show|set`: an account's limits and usage; an admin sets an account's own."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli.common import console, fail, opts

app = typer.Typer(help="Quotas per account: show limits and usage, set them (admin).")


@app.command("show")
def quota_show(
    ctx: typer.Context,
    account: str | None = typer.Option(
        None, "--account", "-a", help="account name or id (default: your own; admin: any)"
    ),
) -> None:
    """An account's limits, what it uses of them, and which are its own."""
    q = opts(ctx).client().quota_show(account)
    console.print(f"account {q.account_name} ({q.account_id})")
    table = Table(box=None, header_style="bold")
    for col in ("QUOTA", "USED", "LIMIT", "SOURCE", "EC2 CODE"):
        table.add_column(col)
    for row in q.quotas:
        limit = "unlimited" if row.limit < 0 else str(row.limit)
        table.add_row(
            row.name,
            str(row.used),
            limit,
            "account" if row.overridden else "default",
            row.ec2_code,
        )
    console.print(table)


@app.command("set")
def quota_set(
    ctx: typer.Context,
    name: str = typer.Argument(
        ...,
        help="instances, vcpus, memory_mib, volumes, volume_gib, snapshots, elastic_ips or "
        "security_groups",
    ),
    value: str = typer.Argument(..., help="the limit; -1 or 'unlimited'; 'default' to reset"),
    account: str = typer.Option(..., "--account", "-a", help="account name or id"),
) -> None:
    """Set an account's own limit (admin)."""
    if value == "default":
        wanted: int | None = None
    elif value == "unlimited":
        wanted = -1
    else:
        try:
            wanted = int(value)
        except ValueError as err:
            raise fail(f"value {value!r} must be a number, -1, unlimited or default") from err
    q = opts(ctx).client().quota_set(account, name, wanted)
    row = next(r for r in q.quotas if r.name == name)
    limit = "unlimited" if row.limit < 0 else str(row.limit)
    console.print(f"account {q.account_name}: {name} limit {limit} (in use {row.used})")
