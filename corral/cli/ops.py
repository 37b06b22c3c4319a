"""`corral op …` and `corral node ls`."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli.common import console, opts, wait_op

app = typer.Typer(help="Operations: list, show, wait, cancel.", no_args_is_help=True)
nodes = typer.Typer(help="Nodes (hypervisor hosts).", no_args_is_help=True)


@app.command("ls")
def op_ls(ctx: typer.Context, limit: int = 20, target: str | None = None) -> None:
    """Recent operations, newest first."""
    table = Table(box=None, header_style="bold")
    for col in ("ID", "TYPE", "TARGET", "STATUS", "PROGRESS", "MESSAGE", "CREATED"):
        table.add_column(col)
    for op in opts(ctx).client().operation_list(limit, target):
        msg = op.error.message if op.error else op.message
        table.add_row(
            op.id,
            op.type,
            op.target_id,
            op.status,
            f"{op.progress:.0%}",
            msg[:60],
            op.created_at.strftime("%H:%M:%S"),
        )
    console.print(table)


@app.command("show")
def op_show(ctx: typer.Context, op_id: str) -> None:
    """One operation with its events."""
    c = opts(ctx).client()
    print(c.operation_show(op_id).model_dump_json(indent=2))
    for e in c.operation_events(op_id):
        print(f"  {e.time:%H:%M:%S.%f} {e.kind:10} {e.progress:4.0%} {e.message}")


@app.command("wait")
def op_wait(ctx: typer.Context, op_id: str) -> None:
    """Wait for an operation to finish."""
    c = opts(ctx).client()
    op = wait_op(c, c.operation_show(op_id), op_id)
    console.print(f"{op.id}: {op.status}")


@app.command("cancel")
def op_cancel(ctx: typer.Context, op_id: str) -> None:
    """Cancel a running operation."""
    op = opts(ctx).client().operation_cancel(op_id)
    console.print(f"{op.id}: {op.status}")


@nodes.command("drain")
def node_drain(
    ctx: typer.Context,
    node: str,
    timeout: float | None = typer.Option(None, help="seconds each migration may take (600)"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Cordon a node and live-migrate every running instance away (spread over the others);
    lists what cannot move and why."""
    from corral.cli.common import fail, wait_op
    from corral.errors import CorralError

    c = opts(ctx).client()
    try:
        res = c.node_drain(node, timeout)
    except CorralError as err:
        raise fail(err.message) from err
    console.print(f"{res.node}: cordoned; {len(res.migrations)} instance(s) moving")
    for name, why in res.not_moved.items():
        console.print(f"  {name}: stays ({why})")
    failed = 0
    for mv in res.migrations:
        if no_wait:
            console.print(f"  {mv.instance}: operation {mv.operation}")
            continue
        try:
            done = wait_op(c, c.operation_show(mv.operation), f"migrate {mv.instance}")
            console.print(f"  {mv.instance}: now on {done.result.get('node')}")
        except CorralError as err:
            console.print(f"  {mv.instance}: [red]{err.message}[/red]")
            failed += 1
    if failed or res.not_moved:
        raise typer.Exit(1)


@nodes.command("evacuate")
def node_evacuate(
    ctx: typer.Context,
    node: str,
    to: str | None = typer.Option(None, "--to", help="the destination (else the scheduler picks)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only show where each would go"),
    no_wait: bool = typer.Option(False, "--no-wait"),
    as_json: bool = typer.Option(False, "--json", help="print the answer as JSON"),
) -> None:
    """Cordon a node and move every stopped instance away cold (its disks copied to another
    node; running ones are left to `corral node drain`); lists what cannot move and why."""
    from corral.cli.common import err_console, fail, wait_op
    from corral.errors import CorralError

    c = opts(ctx).client()
    try:
        res = c.node_evacuate(node, to, dry_run)
    except CorralError as err:
        raise fail(err.message) from err
    if as_json:
        print(res.model_dump_json(indent=2))
    elif dry_run:
        console.print(f"{res.node}: {len(res.moves)} stopped instance(s) would move (dry run)")
        for mv in res.moves:
            console.print(f"  {mv.instance}: to {mv.to}")
    else:
        console.print(f"{res.node}: cordoned; {len(res.moves)} stopped instance(s) moving")
    if not as_json:
        for name, why in res.not_moved.items():
            console.print(f"  {name}: stays ({why})")
    failed = 0
    for mv in res.moves:
        if dry_run or mv.operation is None:
            continue
        if no_wait:
            if not as_json:
                console.print(f"  {mv.instance}: to {mv.to}, operation {mv.operation}")
            continue
        try:
            wait_op(c, c.operation_show(mv.operation), f"evacuate {mv.instance}", quiet=as_json)
            if not as_json:
                console.print(f"  {mv.instance}: now on {mv.to}")
        except CorralError as err:  # on stderr with --json: stdout stays one JSON document
            (err_console if as_json else console).print(
                f"  {mv.instance}: [red]{err.message}[/red]"
            )
            failed += 1
    if failed or res.not_moved:
        raise typer.Exit(1)
