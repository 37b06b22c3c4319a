"""`corral placement-group …` (spread or cluster groups) and `corral capacity` (per node
claimed and free, what more fits, the N+1 verdict)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from corral import models
from corral.cli.common import console, fail, opts
from corral.units import format_size

app = typer.Typer(
    help="Placement groups: spread (one instance per node) or cluster (together).",
    no_args_is_help=True,
)
capacity_app = typer.Typer()


@app.command("ls")
def placement_group_ls(ctx: typer.Context) -> None:
    """List placement groups."""
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "STRATEGY", "STATE", "ID"):
        table.add_column(col)
    for g in opts(ctx).client().placement_group_list():
        table.add_row(g.name, g.strategy, g.state, g.id)
    console.print(table)


@app.command("create")
def placement_group_create(
    ctx: typer.Context,
    name: str,
    strategy: str = typer.Option(
        "spread", "--strategy", "-s", help="spread (one per node) or cluster (together)"
    ),
) -> None:
    """Create a placement group; launch into it with `corral run --placement-group NAME`."""
    try:
        req = models.PlacementGroupCreate(name=name, strategy=strategy)  # type: ignore[arg-type]
    except ValueError as err:
        raise fail(f"strategy {strategy!r} must be spread or cluster") from err
    g = opts(ctx).client().placement_group_create(req)
    console.print(f"placement group {g.name} ({g.id}, {g.strategy})")


@app.command("show")
def placement_group_show(ctx: typer.Context, ref: str) -> None:
    """A placement group and its live instances."""
    g = opts(ctx).client().placement_group_show(ref)
    console.print(f"{g.name} ({g.id}): {g.strategy}, {g.state}")
    for iid in g.instances:
        console.print(f"  {iid}")


@app.command("rm")
def placement_group_rm(ctx: typer.Context, ref: str) -> None:
    """Remove an empty placement group."""
    opts(ctx).client().placement_group_remove(ref)
    console.print(f"removed placement group {ref}")


def _cores(x: float) -> str:
    return f"{x:g}"


@capacity_app.command("capacity")
def capacity(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Per node claimed and free memory, cores and disk; how many more of each instance
    type fit; and whether the others could take any one node's instances (N+1). Admin."""
    rep = opts(ctx).client().capacity_show()
    if as_json:
        print(json.dumps(rep.model_dump(mode="json"), indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in (
        "NODE",
        "STATE",
        "ZONE",
        "INST",
        "MEMORY USED/FREE",
        "CORES USED/FREE",
        "DISK USED/FREE",
    ):
        table.add_column(col)
    for n in rep.nodes:
        state = n.state + (" cordoned" if n.cordoned else "")
        disk = (
            f"{format_size(n.disk_claimed)} / {format_size(n.disk_free)}"
            if n.disk_free is not None
            else f"{format_size(n.disk_claimed)} / ?"
        )
        table.add_row(
            n.name,
            state,
            n.zone,
            str(n.instances),
            f"{format_size(n.memory_claimed)} / {format_size(n.memory_free)}",
            f"{_cores(n.cores_claimed)} / {_cores(n.cores_free)}",
            disk,
        )
    console.print(table)
    console.print(
        "more that fit: " + ", ".join(f"{t} {k}" for t, k in rep.fits.items() if k) or "none"
    )
    if rep.n_plus_one:
        console.print(
            "[green]N+1: OK[/green] - any one node could fail and its instances fit on the others"
        )
    else:
        console.print("[red]N+1: NOT OK[/red]")
    for e in rep.evacuations:
        if e.unplaced:
            console.print(
                f"  if {e.node} failed, {len(e.unplaced)} of its {e.instances} instances "
                f"would not fit: {', '.join(e.unplaced)}"
            )
        else:
            console.print(f"  if {e.node} failed, its {e.instances} instances would fit elsewhere")


@capacity_app.command("rebalance")
def rebalance(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="only show the plan"),
    max_moves: int = typer.Option(10, "--max-moves", min=1, max=100, help="at most this many"),
    timeout: float | None = typer.Option(None, help="seconds each migration may take (600)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="return once the moves are under way"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """(admin) Even out the cluster by live migrations, like Ganeti's hbal: greedy moves that
    lower the spread of claimed memory and CPU across ready nodes, spread placement groups
    repaired first, then the N+1 check. Shows the plan with the score before and after (lower
    is more even), then carries it out one migration after another."""
    from corral.cli.common import wait_op
    from corral.errors import CorralError

    c = opts(ctx).client()
    try:
        plan = c.rebalance(max_moves, dry_run, timeout)
    except CorralError as err:
        raise fail(err.message) from err
    if as_json:
        console.print_json(plan.model_dump_json())
    else:
        _show_plan(plan)
    if plan.operation is None or no_wait:
        return
    try:
        done = wait_op(c, c.operation_show(plan.operation), "rebalance")
    except CorralError as err:
        raise fail(err.message) from err
    result = done.result or {}
    console.print(f"moved: {', '.join(result.get('moved', [])) or 'none'}")
    for name, why in (result.get("not_moved") or {}).items():
        console.print(f"  {name}: [red]{why}[/red]")
    if result.get("not_moved"):
        raise typer.Exit(1)


def _show_plan(plan: models.RebalancePlan) -> None:
    console.print(f"score {plan.score_before:.4f} -> {plan.score_after:.4f} (lower is more even)")
    if not plan.moves:
        console.print("no move would make the cluster more even")
    else:
        table = Table(box=None, header_style="bold")
        for col in ("INSTANCE", "FROM", "TO", "SCORE AFTER"):
            table.add_column(col)
        for m in plan.moves:
            table.add_row(m.instance, m.source, m.target, f"{m.score:.4f}")
        console.print(table)
    use = ", ".join(f"{n} {u.memory:.0%} mem {u.cpu:.0%} cpu" for n, u in plan.nodes.items())
    console.print(f"after: {use}")
    for name, why in plan.not_moved.items():
        console.print(f"  {name}: stays ({why})")
    if plan.operation:
        console.print(f"operation {plan.operation}")
